//! The media service's races and abuse, driven deterministically through a gated store:
//! a delete while the object is processed (nothing comes back), two removals at once
//! (the quota counts the object out once), uses that ended without being recorded (an
//! expired story, a post whose commit never came) no longer pin an object, a use
//! recorded after a delete is refused, and one user cannot hold every chunk buffer (the
//! next is refused at once, `Overloaded`, while other users' chunks go through).

mod support;

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use selfie_services::media::{ChunkHeader, Media, MediaConfig, MediaNode, NewUpload};
use selfie_services::posts::{Audience, NewPost, Posts};
use selfie_services::stories::{NewStory, Stories};
use selfie_services::tables::media::{self as t, Kind, State, Use};
use selfie_services::users::Users;
use selfie_services::{Error, schema, tables};
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::id::IdGenerator;
use selfie_storage::{Clock, Store};
use sha2::{Digest, Sha256};
use support::{Gate, Gated, Op};

struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl ManualClock {
    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
}

const ANA: u64 = 1;
const BEN: u64 = 2;
const CHUNK: u32 = 64 * 1024;

type S = Gated<EmbeddedStore>;

struct World {
    store: S,
    gate: Gate,
    clock: Arc<ManualClock>,
    posts: Rc<Posts<S>>,
    stories: Stories<S>,
    media: Rc<Media<S>>,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let clock = Arc::new(ManualClock(AtomicU64::new(1_800_000_000_000)));
    let dir = tempfile::tempdir().expect("temp dir");
    let inner = EmbeddedStore::open(dir.path().join("db"), &schema::tables(), clock.clone())
        .expect("store");
    let gate = Gate::default();
    let store = Gated {
        inner,
        gate: gate.clone(),
    };
    let users = Users::new(store.clone());
    users.create(ANA, "ana").await.expect("profile");
    users.create(BEN, "ben").await.expect("profile");
    let (hook, jobs) = selfie_services::feed::fanout_queue(1, 0);
    let posts = Rc::new(
        Posts::new(store.clone(), clock.clone(), 1, 0)
            .expect("posts")
            .with_fanout(hook.clone()),
    );
    let feed = Rc::new(selfie_services::feed::Feed::new(
        store.clone(),
        posts.clone(),
        clock.clone(),
        jobs,
        Default::default(),
    ));
    let stories = Stories::new(store.clone(), clock.clone(), 1, 0, posts.clone(), feed)
        .expect("stories")
        .with_fanout(hook);
    let config = MediaConfig {
        chunk_bytes: CHUNK,
        ..MediaConfig::default()
    };
    let node = MediaNode::local(&dir.path().join("media"), config).expect("media node");
    let media = Rc::new(
        Media::new(store.clone(), clock.clone(), 1, 0, node, posts.clone()).expect("media"),
    );
    World {
        store,
        gate,
        clock,
        posts,
        stories,
        media,
        dir,
    }
}

fn jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 5) as u8, 90])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut out),
            image::ImageFormat::Jpeg,
        )
        .expect("jpeg");
    out
}

impl World {
    async fn usage(&self, owner: u64) -> i64 {
        self.store
            .counter_get(&t::USAGE, &tables::key(owner), &tables::name_key("bytes"))
            .await
            .expect("usage")
    }

    /// Files in the blob store (originals and renditions).
    fn blob_files(&self) -> usize {
        fn walk(p: &std::path::Path) -> usize {
            match std::fs::read_dir(p) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok())
                    .map(|e| {
                        let p = e.path();
                        if p.is_dir() { walk(&p) } else { 1 }
                    })
                    .sum(),
                Err(_) => 0,
            }
        }
        walk(&self.dir.path().join("media").join("blobs"))
    }

    /// A ready image of `owner`'s.
    async fn ready(&self, owner: u64) -> u64 {
        let (_, m) = self
            .media
            .upload_bytes(owner, Kind::Image, &jpeg())
            .await
            .expect("upload");
        let m = self
            .media
            .settled(m.media_id, Duration::from_secs(30))
            .await
            .expect("settled");
        assert_eq!(m.state, State::Ready);
        m.media_id
    }
}

/// Runs `f` on a local task set (the media service spawns its processing there).
fn local<F: std::future::Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(tokio::task::LocalSet::new().run_until(f));
}

#[test]
fn a_delete_while_processing_stays_deleted_and_leaves_no_files() {
    local(async {
        let w = world().await;
        // Processing's only write of the record is its result: hold it there.
        let (_, m) = w
            .media
            .upload_bytes(ANA, Kind::Image, &jpeg())
            .await
            .expect("upload");
        let mut held = w.gate.arm(Op::Put, "media");
        held.reached().await;
        let media = w.media.clone();
        let id = m.media_id;
        let delete = tokio::task::spawn_local(async move { media.delete(ANA, id).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        held.release();
        delete.await.expect("task").expect("deleted");
        // Let processing finish whatever it still does.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            t::load(&w.store, id).await.expect("load").is_none(),
            "the record came back after its delete"
        );
        assert_eq!(w.usage(ANA).await, 0);
        assert_eq!(w.blob_files(), 0, "renditions or the original left behind");
        let again = w.media.delete(ANA, id).await;
        assert!(matches!(again, Err(Error::NotFound(_))), "{again:?}");
    });
}

#[test]
fn two_removals_at_once_count_the_object_out_of_the_quota_once() {
    local(async {
        let w = world().await;
        let id = w.ready(ANA).await;
        let size = jpeg().len() as i64;
        assert_eq!(w.usage(ANA).await, size);
        // The owner's delete is held as it removes the record; a release (a post deleted
        // meanwhile) of the same object runs alongside.
        let mut held = w.gate.arm(Op::Delete, "media");
        let media = w.media.clone();
        let delete = tokio::task::spawn_local(async move { media.delete(ANA, id).await });
        held.reached().await;
        let media = w.media.clone();
        let release = tokio::task::spawn_local(async move { media.release(&[id]).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        held.release();
        delete.await.expect("task").expect("deleted");
        release.await.expect("task").expect("released");
        assert_eq!(w.usage(ANA).await, 0, "the object was counted out twice");
        assert_eq!(w.blob_files(), 0);
    });
}

#[test]
fn ended_uses_no_longer_pin_an_object_and_live_ones_do() {
    local(async {
        let w = world().await;
        let id = w.ready(ANA).await;
        let story = w
            .stories
            .create(
                ANA,
                NewStory {
                    media_id: id,
                    caption: String::new(),
                    link_url: String::new(),
                    audience: Audience::Public,
                    duration: None,
                    mentions: Vec::new(),
                    idempotency_key: None,
                },
            )
            .await
            .expect("story");
        let in_use = |r: Result<(), Error>| matches!(r, Err(Error::Stale(_)));
        assert!(
            in_use(w.media.delete(ANA, id).await),
            "a live story uses it"
        );
        w.stories
            .highlight(ANA, story.story_id)
            .await
            .expect("highlight");
        // A day later the story has expired, but the highlight keeps it.
        w.clock.advance(Duration::from_secs(25 * 3600));
        assert!(in_use(w.media.delete(ANA, id).await), "a highlight uses it");
        w.stories
            .remove_highlight(ANA, story.story_id)
            .await
            .expect("unhighlighted");
        // A post whose use was recorded but whose commit never came: pinned while it
        // may still be being written, not after.
        let mut ids = IdGenerator::new(1, 3).expect("ids");
        let pending = ids.next(w.clock.now_ms()).0;
        t::attach(&w.store, &[id], Use::Post(pending), "media_ids")
            .await
            .expect("attached");
        assert!(
            in_use(w.media.delete(ANA, id).await),
            "a post may be committing"
        );
        w.clock.advance(Duration::from_secs(11 * 60));
        // And a real post pins it until it is deleted.
        let post = w
            .posts
            .publish(
                ANA,
                NewPost {
                    media_ids: vec![id],
                    ..NewPost::text("look")
                },
            )
            .await
            .expect("post");
        assert!(in_use(w.media.delete(ANA, id).await), "a post uses it");
        w.posts.delete(ANA, post.post_id).await.expect("deleted");
        assert!(
            w.media.delete(BEN, id).await.is_err(),
            "only its owner deletes it"
        );
        w.media
            .delete(ANA, id)
            .await
            .expect("nothing uses it any more");
        assert_eq!(w.usage(ANA).await, 0);
        let refs = w
            .store
            .scan(&t::REFS, &tables::key(id), &selfie_storage::Scan::all(10))
            .await
            .expect("refs");
        assert!(refs.rows.is_empty(), "ended uses were left: {refs:?}");
    });
}

#[test]
fn a_use_recorded_after_a_delete_is_refused_and_taken_back() {
    local(async {
        let w = world().await;
        let id = w.ready(ANA).await;
        let other = w.ready(ANA).await;
        w.media.delete(ANA, id).await.expect("deleted");
        // The race's losing side: a post that checked the object before its delete
        // records its use after.
        let mut ids = IdGenerator::new(1, 3).expect("ids");
        let post = ids.next(w.clock.now_ms()).0;
        let r = t::attach(&w.store, &[other, id], Use::Post(post), "media_ids").await;
        assert!(
            matches!(r, Err(Error::InvalidArgument { field: "media_ids" })),
            "{r:?}"
        );
        for m in [id, other] {
            let refs = w
                .store
                .scan(&t::REFS, &tables::key(m), &selfie_storage::Scan::all(10))
                .await
                .expect("refs");
            assert!(refs.rows.is_empty(), "a refused use was kept on {m}");
        }
        w.media.delete(ANA, other).await.expect("nothing uses it");
    });
}

#[test]
fn one_user_cannot_hold_every_chunk_buffer() {
    local(async {
        let w = world().await;
        let start = |owner: u64, chunks: u64| {
            let media = w.media.clone();
            async move {
                media
                    .init(
                        owner,
                        NewUpload {
                            kind: Kind::Image,
                            size: chunks * u64::from(CHUNK),
                            sha256: vec![0; 32],
                            alt_text: String::new(),
                        },
                    )
                    .await
                    .expect("init")
            }
        };
        let ana = start(ANA, 12).await;
        let header = |upload_id: u64, i: u64| ChunkHeader {
            upload_id,
            offset: i * u64::from(CHUNK),
            length: CHUNK,
            sha256: vec![0; 32],
        };
        // Chunks whose bytes never come: each holds a buffer until its body stalls out.
        let mut stalled = Vec::new();
        for i in 0..8 {
            let media = w.media.clone();
            let h = header(ana.upload_id, i);
            stalled.push(tokio::task::spawn_local(async move {
                media
                    .chunk(ANA, h, futures::stream::pending().boxed_local())
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ninth = w
            .media
            .chunk(
                ANA,
                header(ana.upload_id, 8),
                futures::stream::pending().boxed_local(),
            )
            .await;
        assert!(matches!(ninth, Err(Error::Overloaded)), "{ninth:?}");
        // Another user's chunk goes through meanwhile.
        let ben = start(BEN, 1).await;
        let bytes = vec![7u8; CHUNK as usize];
        let status = w
            .media
            .chunk(
                BEN,
                ChunkHeader {
                    sha256: Sha256::digest(&bytes).to_vec(),
                    ..header(ben.upload_id, 0)
                },
                futures::stream::iter([Ok(Bytes::from(bytes))]).boxed_local(),
            )
            .await
            .expect("ben's chunk");
        assert_eq!(status.offset, u64::from(CHUNK));
        // Connections that go away give their buffers back.
        for s in stalled {
            s.abort();
            assert!(s.await.is_err_and(|e| e.is_cancelled()));
        }
        let bytes = vec![9u8; CHUNK as usize];
        w.media
            .chunk(
                ANA,
                ChunkHeader {
                    sha256: Sha256::digest(&bytes).to_vec(),
                    ..header(ana.upload_id, 0)
                },
                futures::stream::iter([Ok(Bytes::from(bytes))]).boxed_local(),
            )
            .await
            .expect("ana's buffers came back");
    });
}
