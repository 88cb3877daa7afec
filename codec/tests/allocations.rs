//! Allocation behaviour, measured with a counting global allocator (this test binary
//! only): no allocation proportional to a claimed length, none per frame in steady state.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use selfie_codec::{Encoder, FrameDecoder, Limits};

struct Counting;

thread_local! {
    static COUNT: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    // `try_with`: thread-local storage may be gone while a thread exits.
    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread by `f`: (count, largest single size).
fn measure<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    COUNT.with(|c| c.set(0));
    LARGEST.with(|l| l.set(0));
    let r = f();
    (r, COUNT.with(Cell::get), LARGEST.with(Cell::get))
}

#[test]
fn a_claimed_length_is_not_allocated_before_its_bytes_arrive() {
    let limits = Limits {
        max_frame_bytes: 64 << 20,
        ..Limits::DEFAULT
    };
    let mut dec = FrameDecoder::new(limits);
    let mut start = (60u32 << 20).to_le_bytes().to_vec();
    start.extend_from_slice(&[0u8; 100]);
    let chunk = Bytes::from(start);
    let (r, _, largest) = measure(|| {
        dec.push(chunk);
        dec.next_frame()
    });
    assert!(r.expect("valid so far").is_none());
    assert!(
        largest < 4096,
        "allocated {largest} bytes for a 60 MiB claim"
    );
}

#[test]
fn a_four_gib_prefix_allocates_nothing_large() {
    let mut dec = FrameDecoder::new(Limits::DEFAULT);
    let chunk = Bytes::from_static(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]);
    let (r, _, largest) = measure(|| {
        dec.push(chunk);
        dec.next_frame()
    });
    assert!(r.is_err());
    assert!(largest < 4096, "allocated {largest} bytes");
}

#[test]
fn encoding_allocates_nothing_in_steady_state() {
    let mut enc = Encoder::new(Limits::DEFAULT);
    // Warm-up: the builder grows to the largest message once.
    for id in 0..3 {
        enc.encode(|b| common::samples::feed_page(b, id))
            .expect("fits");
        enc.encode(|b| common::samples::chat_message(b, id))
            .expect("fits");
        enc.encode(|b| common::samples::hello(b, id)).expect("fits");
    }
    let (_, count, _) = measure(|| {
        for id in 0..100 {
            enc.encode(|b| common::samples::chat_message(b, id))
                .expect("fits");
            enc.encode(|b| common::samples::hello(b, id)).expect("fits");
            enc.encode(|b| common::samples::feed_page(b, id))
                .expect("fits");
        }
    });
    assert_eq!(count, 0, "allocations while encoding 300 frames");
}

#[test]
fn decoding_whole_frames_allocates_nothing_per_frame() {
    let mut enc = Encoder::new(Limits::DEFAULT);
    let chat = Bytes::copy_from_slice(
        enc.encode(|b| common::samples::chat_message(b, 1))
            .expect("fits"),
    );
    let feed = Bytes::copy_from_slice(
        enc.encode(|b| common::samples::feed_page(b, 2))
            .expect("fits"),
    );
    let mut dec = FrameDecoder::new(Limits::DEFAULT);
    // Warm-up: the decoder's chunk queue gets its capacity.
    dec.push(chat.clone());
    dec.push(feed.clone());
    dec.next_frame().expect("valid").expect("whole");
    dec.next_frame().expect("valid").expect("whole");
    let (_, count, _) = measure(|| {
        for _ in 0..100 {
            dec.push(chat.clone());
            dec.push(feed.clone());
            let a = dec.next_frame().expect("valid").expect("whole");
            let b = dec.next_frame().expect("valid").expect("whole");
            assert_eq!((a.id(), b.id()), (1, 2));
        }
    });
    assert_eq!(count, 0, "allocations while decoding 200 frames");
}

#[test]
fn an_arena_copies_small_frames_without_an_allocation_each() {
    use selfie_codec::FrameArena;
    let mut enc = Encoder::new(Limits::DEFAULT);
    let mut arena = FrameArena::new(16 * 1024);
    // Warm-up: the builder grows, the arena takes its first block.
    for id in 0..3 {
        drop(enc.encode_in(&mut arena, |b| common::samples::chat_message(b, id)));
    }
    // Frames sent and dropped one after another (a request's answer is released once
    // the peer acknowledged it): the block is reclaimed in place.
    let (frames, count, _) = measure(|| {
        let mut total = 0;
        for id in 0..2_000 {
            let f = enc
                .encode_in(&mut arena, |b| common::samples::chat_message(b, id))
                .expect("fits");
            total += f.len();
        }
        total
    });
    assert!(frames > 2_000 * 64, "frames were written");
    assert_eq!(count, 0, "allocations while copying 2,000 small frames");

    // A frame held for long does not stop the arena: the next block is a new one, and
    // the frames keep their bytes.
    let held = enc
        .encode_in(&mut arena, |b| common::samples::chat_message(b, 7))
        .expect("fits");
    let copy = held.to_vec();
    let (_, count, _) = measure(|| {
        for id in 0..2_000 {
            drop(enc.encode_in(&mut arena, |b| common::samples::chat_message(b, id)));
        }
    });
    assert!(count <= 4, "{count} allocations with one frame held");
    assert_eq!(held.as_ref(), copy.as_slice());
    let verified = selfie_codec::Frame::verify(held, &Limits::DEFAULT).expect("intact");
    assert_eq!(verified.id(), 7);

    // Large frames get their own allocation (never pinning a block).
    let big = vec![7u8; FrameArena::MAX_SMALL + 1];
    let (b, count, largest) = measure(|| arena.copy(&big));
    assert_eq!(b.as_ref(), big.as_slice());
    assert_eq!((count, largest), (1, big.len()));
}
