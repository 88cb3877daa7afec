//! The media service's races and abuse, driven deterministically through a gated store
//! and a gated blob store: a delete while the object is processed (nothing comes back),
//! two removals at once on one node or on two (the quota counts the object out once), a
//! use recorded while a delete looks (the object is put back), a removal cut short by a
//! storage fault (finished by the next one, or at the node's start), uses that ended
//! without being recorded (an expired story, a post whose commit never came) no longer
//! pin an object, a use recorded after a delete is refused without taking back earlier
//! uses, and one user cannot hold every chunk buffer or more than two completion checks
//! (the next is refused at once, `Overloaded`, while other users' go through), nor can
//! slow senders on many accounts (they hold only the bytes they sent).

mod support;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use selfie_services::BoxFuture;
use selfie_services::chat::{Chat, MessageKind, NewMessage, Update};
use selfie_services::media::{
    BlobStore, ChunkHeader, LocalBlobs, Media, MediaConfig, MediaNode, NewUpload, Staging,
};
use selfie_services::posts::{Audience, NewPost, Posts};
use selfie_services::stories::{NewStory, Stories};
use selfie_services::tables::media::{self as t, Kind, State, Use};
use selfie_services::users::Users;
use selfie_services::{Error, schema, tables};
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::id::IdGenerator;
use selfie_storage::key::KeyBuilder;
use selfie_storage::{Clock, Store};
use sha2::{Digest, Sha256};
use support::{Gate, Gated, ManualClock, Op};
use tokio::sync::oneshot;

/// What a [`GatedBlobs`] can hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BlobOp {
    Put,
    Delete,
}

/// A held operation: which, the key prefix it waits for, "reached", "released".
type Armed = (
    BlobOp,
    &'static str,
    oneshot::Sender<()>,
    oneshot::Receiver<()>,
);

/// The local blob store, whose next put of a key with a given prefix can be held.
struct GatedBlobs {
    inner: LocalBlobs,
    armed: Mutex<Option<Armed>>,
}

impl GatedBlobs {
    /// Holds the next `op` on a key starting with `prefix`: the receiver fires when it
    /// is reached, the sender lets it go on.
    fn hold(
        &self,
        op: BlobOp,
        prefix: &'static str,
    ) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.armed.lock().expect("armed") = Some((op, prefix, reached_tx, release_rx));
        (reached_rx, release_tx)
    }

    fn hold_put(&self, prefix: &'static str) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        self.hold(BlobOp::Put, prefix)
    }

    async fn pass(&self, op: BlobOp, key: &str) {
        let armed = {
            let mut slot = self.armed.lock().expect("armed");
            match slot.as_ref() {
                Some((o, prefix, _, _)) if *o == op && key.starts_with(prefix) => slot.take(),
                _ => None,
            }
        };
        if let Some((_, _, reached, release)) = armed {
            let _ = reached.send(());
            let _ = release.await;
        }
    }
}

impl BlobStore for GatedBlobs {
    fn backend(&self) -> &'static str {
        "gated"
    }

    fn put_file(&self, key: String, from: PathBuf) -> BoxFuture<'_, selfie_services::Result<()>> {
        Box::pin(async move {
            self.pass(BlobOp::Put, &key).await;
            self.inner.put_file(key, from).await
        })
    }

    fn put(&self, key: String, bytes: Bytes) -> BoxFuture<'_, selfie_services::Result<()>> {
        Box::pin(async move {
            self.pass(BlobOp::Put, &key).await;
            self.inner.put(key, bytes).await
        })
    }

    fn read(
        &self,
        key: String,
        start: u64,
        len: usize,
    ) -> BoxFuture<'_, selfie_services::Result<Bytes>> {
        self.inner.read(key, start, len)
    }

    fn size(&self, key: String) -> BoxFuture<'_, selfie_services::Result<Option<u64>>> {
        self.inner.size(key)
    }

    fn delete(&self, key: String) -> BoxFuture<'_, selfie_services::Result<()>> {
        Box::pin(async move {
            self.pass(BlobOp::Delete, &key).await;
            self.inner.delete(key).await
        })
    }
}

const ANA: u64 = 1;
const BEN: u64 = 2;
const CAT: u64 = 3;
const CHUNK: u32 = 64 * 1024;

type S = Gated<EmbeddedStore>;

struct World {
    store: S,
    gate: Gate,
    clock: Arc<ManualClock>,
    posts: Rc<Posts<S>>,
    stories: Stories<S>,
    media: Rc<Media<S>>,
    chat: Chat<S>,
    blobs: Arc<GatedBlobs>,
    config: MediaConfig,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    world_with(MediaConfig {
        chunk_bytes: CHUNK,
        ..MediaConfig::default()
    })
    .await
}

async fn world_with(config: MediaConfig) -> World {
    let clock = ManualClock::new();
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
    users.create(CAT, "cat").await.expect("profile");
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
    let blobs = Arc::new(GatedBlobs {
        inner: LocalBlobs::open(dir.path().join("media")).expect("blobs"),
        armed: Mutex::new(None),
    });
    let node = MediaNode::new(
        blobs.clone(),
        Staging::open(dir.path().join("media").join("staging")).expect("staging"),
        config,
    );
    node.serve_urls(selfie_services::media::urls::UrlSigner::new(
        URL_KEY,
        "https://media.test",
        Duration::from_secs(3600),
    ));
    let media = Rc::new(
        Media::new(store.clone(), clock.clone(), 1, 0, node, posts.clone()).expect("media"),
    );
    let releasing = media.clone();
    let chat = Chat::new(store.clone(), clock.clone(), 1, 0)
        .expect("chat")
        .with_media_release(Rc::new(move |ids: Vec<u64>| {
            let media = releasing.clone();
            tokio::task::spawn_local(async move {
                media.release(&ids).await.expect("released");
            });
        }));
    World {
        chat,
        store,
        gate,
        clock,
        posts,
        stories,
        media,
        blobs,
        config,
        dir,
    }
}

fn jpeg() -> Vec<u8> {
    encode_jpeg(image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 5) as u8, 90])
    }))
}

fn encode_jpeg(img: image::RgbImage) -> Vec<u8> {
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
    /// An upload of `bytes` (one chunk) by `owner`, every byte sent, not completed.
    async fn staged(&self, owner: u64, bytes: Vec<u8>) -> selfie_services::media::UploadStatus {
        let size = bytes.len() as u64;
        let upload = self
            .media
            .init(
                owner,
                NewUpload {
                    kind: Kind::Image,
                    size,
                    sha256: Sha256::digest(&bytes).to_vec(),
                    alt_text: String::new(),
                },
            )
            .await
            .expect("init");
        self.media
            .chunk(
                owner,
                ChunkHeader {
                    upload_id: upload.upload_id,
                    offset: 0,
                    length: size as u32,
                    sha256: Sha256::digest(&bytes).to_vec(),
                },
                futures::stream::iter([Ok(Bytes::from(bytes))]).boxed_local(),
            )
            .await
            .expect("chunk");
        upload
    }

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

    /// The media service of another node of the fleet (node number `number`): the same
    /// store and blob store, its own locks and limits.
    fn other_node(&self, number: u16) -> Rc<Media<S>> {
        let node = MediaNode::new(
            self.blobs.clone(),
            Staging::open(self.dir.path().join("media").join("staging")).expect("staging"),
            self.config,
        );
        Rc::new(
            Media::new(
                self.store.clone(),
                self.clock.clone(),
                number,
                0,
                node,
                self.posts.clone(),
            )
            .expect("media"),
        )
    }

    /// Rows left in `media_removals` (removals cut short), on every node.
    async fn removals(&self, node: u64) -> usize {
        self.store
            .scan(
                &t::REMOVALS,
                &tables::key(node),
                &selfie_storage::Scan::all(100),
            )
            .await
            .expect("removals")
            .rows
            .len()
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
        // Processing is held as it stores its first rendition (the original read, the
        // renditions made, the object's lock not yet taken); the owner deletes it then.
        let (reached, release) = w.blobs.hold_put("r/");
        let (_, m) = w
            .media
            .upload_bytes(ANA, Kind::Image, &jpeg())
            .await
            .expect("upload");
        tokio::time::timeout(Duration::from_secs(30), reached)
            .await
            .expect("processing reached its renditions")
            .expect("gate");
        let id = m.media_id;
        w.media.delete(ANA, id).await.expect("deleted");
        assert!(t::load(&w.store, id).await.expect("load").is_none());
        release.send(()).expect("processing waits");
        // Processing finishes: it finds the object gone and takes back what it made.
        let jobs = tables::key(1);
        for _ in 0..300 {
            let left = w
                .store
                .scan(&t::JOBS, &jobs, &selfie_storage::Scan::all(10))
                .await
                .expect("jobs");
            if left.rows.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            t::load_raw(&w.store, id).await.expect("load").is_none(),
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
        // The owner's delete is held as it marks the record; a release (a post deleted
        // meanwhile) of the same object runs alongside on this node.
        let mut held = w.gate.arm(Op::CompareAndSet, "media");
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
fn two_nodes_removing_one_object_count_it_out_once() {
    local(async {
        let w = world().await;
        let id = w.ready(ANA).await;
        let other = w.other_node(2);
        // This node's delete passes its tombstone and marks the object for collection,
        // then is held just before it deletes the record (its files already gone); the
        // other node (its own locks) removes the object meanwhile, from start to end.
        let media = w.media.clone();
        let mut held = w.gate.arm(Op::CompareAndSet, "media");
        let delete = tokio::task::spawn_local(async move { media.delete(ANA, id).await });
        for _ in 0..2 {
            held.reached().await;
            held.release();
            held = w.gate.arm(Op::CompareAndSet, "media");
        }
        held.reached().await;
        let raw = t::load_raw(&w.store, id)
            .await
            .expect("load")
            .expect("record");
        assert_eq!(raw.1.state, State::Collecting);
        other.release(&[id]).await.expect("released elsewhere");
        assert_eq!(w.usage(ANA).await, 0);
        held.release();
        let late = delete.await.expect("task");
        assert!(matches!(late, Err(Error::NotFound(_))), "{late:?}");
        assert_eq!(w.usage(ANA).await, 0, "the object was counted out twice");
        assert_eq!(w.blob_files(), 0);
        assert_eq!(w.removals(1).await + w.removals(2).await, 0);
    });
}

#[test]
fn a_removal_that_puts_an_object_back_stops_the_other_from_collecting_it() {
    local(async {
        let w = world().await;
        let id = w.ready(ANA).await;
        let size = jpeg().len() as i64;
        let files = w.blob_files();
        let other = w.other_node(2);
        // This node's delete has marked the object Deleting and found no use; it is held
        // before it moves on to collecting. A use is recorded then (a post committing),
        // and the other node's removal sees the tombstone and that use: it puts the
        // object back. This node must then not delete the files of a live object.
        let media = w.media.clone();
        let mut held = w.gate.arm(Op::CompareAndSet, "media");
        let delete = tokio::task::spawn_local(async move { media.delete(ANA, id).await });
        held.reached().await;
        held.release();
        held = w.gate.arm(Op::CompareAndSet, "media");
        held.reached().await;
        let mut ids = IdGenerator::new(1, 3).expect("ids");
        let post = ids.next(w.clock.now_ms()).0;
        let use_row = KeyBuilder::new().u64(1).u64(post).build();
        w.store
            .put(&t::REFS, &tables::key(id), &use_row, &[], None)
            .await
            .expect("a use recorded");
        other.release(&[id]).await.expect("released elsewhere");
        held.release();
        let r = delete.await.expect("task");
        assert!(matches!(r, Err(Error::Stale(_))), "{r:?}");
        let back = t::load(&w.store, id)
            .await
            .expect("load")
            .expect("put back");
        assert_eq!(back.state, State::Ready);
        assert_eq!(w.blob_files(), files, "the files of a live object went");
        assert_eq!(w.usage(ANA).await, size);
    });
}

#[test]
fn an_upload_on_another_node_keeps_the_original_a_removal_is_deleting() {
    local(async {
        let w = world().await;
        let id = w.ready(ANA).await;
        let other = w.other_node(2);
        // This node removes the object, the last one of its bytes: it is held just as it
        // deletes the original. The same bytes are uploaded on the other node then.
        let (reached, release) = w.blobs.hold(BlobOp::Delete, "sha256/");
        let media = w.media.clone();
        let delete = tokio::task::spawn_local(async move { media.delete(ANA, id).await });
        tokio::time::timeout(Duration::from_secs(30), reached)
            .await
            .expect("the removal reached the original")
            .expect("gate");
        let uploading = other.clone();
        let upload = tokio::task::spawn_local(async move {
            uploading.upload_bytes(BEN, Kind::Image, &jpeg()).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !upload.is_finished(),
            "the upload waits for the removal of its original"
        );
        release.send(()).expect("removal waits");
        delete.await.expect("task").expect("deleted");
        let (_, m) = upload.await.expect("task").expect("uploaded");
        let m = other
            .settled(m.media_id, Duration::from_secs(30))
            .await
            .expect("settled");
        assert_eq!(m.state, State::Ready, "{}", m.reason);
        let original = w
            .blobs
            .size(t::original_key(&m.sha256))
            .await
            .expect("size");
        assert_eq!(original, Some(jpeg().len() as u64), "the original is there");
    });
}

#[test]
fn a_use_recorded_while_a_delete_looks_puts_the_object_back() {
    local(async {
        let w = world().await;
        let id = w.ready(ANA).await;
        let size = jpeg().len() as i64;
        let files = w.blob_files();
        // The delete has found no use and is about to mark the record; a post records
        // its use then (and sees the object still ready).
        let mut held = w.gate.arm(Op::CompareAndSet, "media");
        let media = w.media.clone();
        let delete = tokio::task::spawn_local(async move { media.delete(ANA, id).await });
        held.reached().await;
        let mut ids = IdGenerator::new(1, 3).expect("ids");
        let post = ids.next(w.clock.now_ms()).0;
        t::attach(&w.store, &[id], Use::Post(post), "media_ids")
            .await
            .expect("the use is recorded");
        held.release();
        let r = delete.await.expect("task");
        assert!(matches!(r, Err(Error::Stale(_))), "{r:?}");
        let back = t::load(&w.store, id)
            .await
            .expect("load")
            .expect("put back");
        assert_eq!(back.state, State::Ready);
        assert_eq!(w.usage(ANA).await, size);
        assert_eq!(w.blob_files(), files, "files of an object in use went");
        assert_eq!(w.removals(1).await, 0);
    });
}

#[test]
fn a_removal_cut_short_is_finished_by_the_next_and_at_start() {
    local(async {
        let w = world().await;
        let size = jpeg().len() as i64;
        for restart in [false, true] {
            let id = w.ready(ANA).await;
            // A storage fault as the delete drops the reference to the original.
            w.gate.fail(Op::Delete, "media_blobs");
            let r = w.media.delete(ANA, id).await;
            assert!(matches!(r, Err(Error::Storage(_))), "{r:?}");
            // Gone for readers, still counted, and noted for the node.
            assert!(t::load(&w.store, id).await.expect("load").is_none());
            assert!(
                w.media.get(ANA, id).await.is_err(),
                "a half-removed object is still served"
            );
            assert_eq!(w.usage(ANA).await, size);
            assert_eq!(w.removals(1).await, 1);
            if restart {
                // The node starts again: its removals are finished first.
                let again = w.other_node(1);
                again.start();
                for _ in 0..300 {
                    if w.removals(1).await == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } else {
                // The owner tries again.
                w.media.delete(ANA, id).await.expect("finished");
            }
            assert!(t::load_raw(&w.store, id).await.expect("load").is_none());
            assert_eq!(w.usage(ANA).await, 0);
            assert_eq!(w.blob_files(), 0);
            assert_eq!(w.removals(1).await, 0);
        }
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
fn objects_never_used_are_collected_a_day_later() {
    local(async {
        let w = world().await;
        let size = jpeg().len() as i64;
        let posted = w.ready(ANA).await;
        let forgotten = w.ready(ANA).await;
        w.posts
            .publish(
                ANA,
                NewPost {
                    media_ids: vec![posted],
                    ..NewPost::text("kept")
                },
            )
            .await
            .expect("post");
        assert_eq!(
            w.media.collect_unused().await.expect("sweep"),
            0,
            "too soon"
        );
        w.clock.advance(Duration::from_secs(20 * 3600));
        let recent = w.ready(ANA).await;
        w.clock.advance(Duration::from_secs(5 * 3600));
        assert_eq!(w.media.collect_unused().await.expect("sweep"), 1);
        assert!(t::load(&w.store, forgotten).await.expect("load").is_none());
        assert!(t::load(&w.store, posted).await.expect("load").is_some());
        assert!(
            t::load(&w.store, recent).await.expect("load").is_some(),
            "uploaded five hours ago"
        );
        assert_eq!(w.usage(ANA).await, 2 * size);
        // Swept once: the posted object is no longer looked at, the recent one is later.
        assert_eq!(w.media.collect_unused().await.expect("sweep"), 0);
        w.clock.advance(Duration::from_secs(20 * 3600));
        assert_eq!(w.media.collect_unused().await.expect("sweep"), 1);
        assert!(t::load(&w.store, recent).await.expect("load").is_none());
        assert!(t::load(&w.store, posted).await.expect("load").is_some());
        assert_eq!(w.usage(ANA).await, size);
    });
}

/// A group's avatar is one of the admin's own ready images: its members see it, nobody
/// else does, and it is kept (not collected as unused) while it is the avatar.
#[test]
fn a_group_avatar_is_the_admins_own_image_seen_by_its_members() {
    local(async {
        let w = world().await;
        let group = w
            .chat
            .group(ANA, &[BEN], "trip", false, Vec::new(), None)
            .await
            .expect("group");
        let avatar = |id| Update {
            avatar_media_id: Some(id),
            ..Update::default()
        };
        let bens = w.ready(BEN).await;
        let refused = w.chat.update(ANA, group, avatar(bens)).await;
        assert!(refused.is_err(), "another user's image: {refused:?}");
        assert!(w.chat.update(ANA, group, avatar(424242)).await.is_err());
        let picture = w.ready(ANA).await;
        w.chat
            .update(ANA, group, avatar(picture))
            .await
            .expect("avatar");
        w.media.get(BEN, picture).await.expect("a member sees it");
        assert!(w.media.get(CAT, picture).await.is_err(), "cat is not in it");
        w.clock.advance(Duration::from_secs(25 * 3600));
        w.media.collect_unused().await.expect("sweep");
        assert!(
            t::load(&w.store, picture).await.expect("load").is_some(),
            "the avatar was collected as unused"
        );
        // A new avatar: the old one is no longer the group's.
        let next = w.ready(ANA).await;
        w.chat
            .update(ANA, group, avatar(next))
            .await
            .expect("avatar");
        let uses = |id| {
            let store = w.store.clone();
            async move {
                store
                    .scan(&t::REFS, &tables::key(id), &selfie_storage::Scan::all(10))
                    .await
                    .expect("refs")
                    .rows
                    .len()
            }
        };
        assert_eq!((uses(picture).await, uses(next).await), (0, 1));

        // Two changes of the group racing on two nodes: a rename held before its commit
        // while the other node sets an avatar. The rename, retried, keeps that avatar
        // (it once wrote back the record it had read), and the replaced one's use ends.
        let node2 = Chat::new(w.store.clone(), w.clock.clone(), 2, 0).expect("chat");
        let third = w.ready(ANA).await;
        let mut held = w.gate.arm(Op::Commit, "");
        let race = async {
            held.reached().await;
            node2
                .update(ANA, group, avatar(third))
                .await
                .expect("avatar on node 2");
            held.release();
        };
        let rename = Update {
            title: Some("renamed".into()),
            ..Update::default()
        };
        let (renamed, ()) = tokio::join!(w.chat.update(ANA, group, rename), race);
        renamed.expect("renamed");
        let view = w.chat.view(BEN, group).await.expect("view");
        assert_eq!(
            (view.rec.title.as_str(), view.rec.avatar_media_id),
            ("renamed", third)
        );
        assert_eq!((uses(next).await, uses(third).await), (0, 1));
    });
}

fn message(txn: &str, media_ids: Vec<u64>) -> NewMessage {
    NewMessage {
        client_msg_id: txn.into(),
        kind: MessageKind::Text,
        text: "look".into(),
        media_ids,
        reply_to_seq: 0,
        ref_id: 0,
        thread_seq: 0,
        forward: None,
        mls: None,
    }
}

#[test]
fn chat_attachments_are_seen_by_members_and_released_with_their_messages() {
    local(async {
        let w = world().await;
        let photo = w.ready(ANA).await;
        let bens = w.ready(BEN).await;
        let ana_ben = w.chat.direct(ANA, BEN).await.expect("conversation");
        // Only the sender's own ready media.
        let r = w.chat.send(ANA, ana_ben, message("t0", vec![bens])).await;
        assert!(
            matches!(r, Err(Error::InvalidArgument { field: "media_ids" })),
            "{r:?}"
        );
        let sent = w
            .chat
            .send(ANA, ana_ben, message("t1", vec![photo]))
            .await
            .expect("sent");
        // Its members may see and download it, nobody else.
        w.media.get(BEN, photo).await.expect("a member sees it");
        let d = w.media.download(BEN, photo, "", 0, 0).await;
        assert!(d.is_ok(), "a member downloads it");
        let r = w.media.get(CAT, photo).await;
        assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");
        let r = w.media.delete(ANA, photo).await;
        assert!(
            matches!(r, Err(Error::Stale(_))),
            "a message uses it: {r:?}"
        );
        // Ben forwards it to Cat: Cat sees it through the forward.
        let ben_cat = w.chat.direct(BEN, CAT).await.expect("conversation");
        let mut fwd = message("t2", Vec::new());
        fwd.forward = Some((ana_ben, sent.seq));
        let forwarded = w.chat.send(BEN, ben_cat, fwd).await.expect("forwarded");
        w.media
            .get(CAT, photo)
            .await
            .expect("Cat sees the forward's");
        // Deleted for everyone: the original message no longer pins it, the forward does.
        w.chat
            .delete(ANA, ana_ben, sent.seq)
            .await
            .expect("deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(t::load(&w.store, photo).await.expect("load").is_some());
        let refs = w
            .store
            .scan(
                &t::REFS,
                &tables::key(photo),
                &selfie_storage::Scan::all(10),
            )
            .await
            .expect("refs");
        assert_eq!(refs.rows.len(), 1, "only the forward uses it now");
        w.media
            .get(CAT, photo)
            .await
            .expect("still through the forward");
        // Blocked, the forward's sender's attachments are hidden as its messages are.
        let graph = selfie_services::graph::Graph::new(w.store.clone());
        graph.block(CAT, BEN).await.expect("blocked");
        let r = w.media.get(CAT, photo).await;
        assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");
        // A declined message request shows nothing either.
        let second = w.ready(ANA).await;
        let ana_cat = w.chat.direct(ANA, CAT).await.expect("conversation");
        let sent = w
            .chat
            .send(ANA, ana_cat, message("t3", vec![second]))
            .await
            .expect("sent");
        w.media
            .get(CAT, second)
            .await
            .expect("a request's recipient sees it");
        w.chat
            .answer_request(CAT, ana_cat, false)
            .await
            .expect("declined");
        let r = w.media.get(CAT, second).await;
        assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");
        w.chat
            .delete(ANA, ana_cat, sent.seq)
            .await
            .expect("deleted");
        w.chat
            .delete(BEN, ben_cat, forwarded.seq)
            .await
            .expect("deleted");
        for _ in 0..100 {
            if t::load(&w.store, photo).await.expect("load").is_none()
                && t::load(&w.store, second).await.expect("load").is_none()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            t::load(&w.store, photo).await.expect("load").is_none(),
            "released with its last message"
        );
        assert!(t::load(&w.store, second).await.expect("load").is_none());
        assert_eq!(w.usage(ANA).await, 0);
    });
}

/// A message stored before attachments were checked names any ids: forwarding it
/// must not make them someone's attachment.
#[test]
fn a_forward_carries_only_what_its_original_used() {
    local(async {
        let w = world().await;
        let bens = w.ready(BEN).await;
        let ana_ben = w.chat.direct(ANA, BEN).await.expect("conversation");
        let sent = w
            .chat
            .send(ANA, ana_ben, message("t1", Vec::new()))
            .await
            .expect("sent");
        // The stored message is made to name Ben's photo, as an old one could.
        let partition = tables::chat::log_partition(ana_ben, sent.seq);
        let row = tables::key(sent.seq);
        let raw = w
            .store
            .get(&tables::chat::LOG, &partition, &row)
            .await
            .expect("get")
            .expect("entry");
        let mut entry: selfie_services::chat::Entry =
            tables::decode("chat log entry", &raw).expect("decode");
        if let selfie_services::chat::Entry::Message(m) = &mut entry {
            m.media_ids = vec![bens];
        }
        let bytes = tables::encode("chat log entry", &entry).expect("encode");
        w.store
            .put(&tables::chat::LOG, &partition, &row, &bytes, None)
            .await
            .expect("put");
        let ana_cat = w.chat.direct(ANA, CAT).await.expect("conversation");
        let mut fwd = message("t2", Vec::new());
        fwd.forward = Some((ana_ben, sent.seq));
        let r = w.chat.send(ANA, ana_cat, fwd).await;
        assert!(
            matches!(r, Err(Error::InvalidArgument { field: "media_ids" })),
            "{r:?}"
        );
        let r = w.media.get(CAT, bens).await;
        assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");
    });
}

#[test]
fn a_refused_use_keeps_the_uses_recorded_before_it() {
    local(async {
        let w = world().await;
        let kept = w.ready(ANA).await;
        let gone = w.ready(ANA).await;
        let mut ids = IdGenerator::new(1, 3).expect("ids");
        let post = ids.next(w.clock.now_ms()).0;
        t::attach(&w.store, &[kept], Use::Post(post), "media_ids")
            .await
            .expect("attached");
        w.media.delete(ANA, gone).await.expect("deleted");
        // An edit of the post keeps its first object and adds one deleted meanwhile.
        let r = t::attach(&w.store, &[kept, gone], Use::Post(post), "media_ids").await;
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
        let refs = w
            .store
            .scan(&t::REFS, &tables::key(kept), &selfie_storage::Scan::all(10))
            .await
            .expect("refs");
        assert_eq!(refs.rows.len(), 1, "the post's earlier use was taken back");
        let r = w.media.delete(ANA, kept).await;
        assert!(matches!(r, Err(Error::Stale(_))), "{r:?}");
    });
}

#[test]
fn one_user_holds_two_completion_checks_at_most() {
    local(async {
        let w = world().await;
        let image = jpeg();
        let upload = |owner: u64| {
            let media = w.media.clone();
            let image = image.clone();
            async move {
                let u = media
                    .init(
                        owner,
                        NewUpload {
                            kind: Kind::Image,
                            size: image.len() as u64,
                            sha256: Sha256::digest(&image).to_vec(),
                            alt_text: String::new(),
                        },
                    )
                    .await
                    .expect("init");
                media
                    .chunk(
                        owner,
                        ChunkHeader {
                            upload_id: u.upload_id,
                            offset: 0,
                            length: image.len() as u32,
                            sha256: Sha256::digest(&image).to_vec(),
                        },
                        futures::stream::iter([Ok(Bytes::from(image))]).boxed_local(),
                    )
                    .await
                    .expect("chunk");
                u.upload_id
            }
        };
        let ana: Vec<u64> = futures::future::join_all((0..3).map(|_| upload(ANA))).await;
        let bens = upload(BEN).await;
        // Two of Ana's completions are held inside their checks (as they list the
        // chunks); her third is refused at once, Ben's goes through.
        let mut holding = Vec::new();
        for &id in &ana[..2] {
            let mut held = w.gate.arm(Op::Scan, "media_upload_chunks");
            let media = w.media.clone();
            let task = tokio::task::spawn_local(async move { media.complete(ANA, id, &[]).await });
            held.reached().await;
            holding.push((held, task));
        }
        let r = w.media.complete(ANA, ana[2], &[]).await;
        assert!(matches!(r, Err(Error::Overloaded)), "{r:?}");
        w.media
            .complete(BEN, bens, &[])
            .await
            .expect("another user's check goes through");
        for (mut held, task) in holding {
            held.release();
            task.await.expect("task").expect("completed");
        }
        w.media
            .complete(ANA, ana[2], &[])
            .await
            .expect("the checks came back");
    });
}

/// Many accounts each holding their share of chunks whose bytes trickle in (a
/// slowloris spread over sybils) leave room for everyone else: a chunk holds a slot,
/// and memory only for the bytes it has sent; bytes past the node's chunk memory are
/// refused `Overloaded`, and come back when their senders go.
#[test]
fn slow_senders_on_many_accounts_hold_only_what_they_sent() {
    local(async {
        let w = world().await;
        let header = |upload_id: u64, i: u64| ChunkHeader {
            upload_id,
            offset: i * u64::from(CHUNK),
            length: CHUNK,
            sha256: vec![0; 32],
        };
        let start = |owner: u64| {
            let media = w.media.clone();
            async move {
                media
                    .init(
                        owner,
                        NewUpload {
                            kind: Kind::Image,
                            size: 8 * u64::from(CHUNK),
                            sha256: vec![0; 32],
                            alt_text: String::new(),
                        },
                    )
                    .await
                    .expect("init")
                    .upload_id
            }
        };
        // Twelve accounts, eight chunks each (96, more than the 64 chunks of memory),
        // each having sent one byte.
        let mut slow = Vec::new();
        for owner in 1_000..1_012u64 {
            let upload = start(owner).await;
            for i in 0..8 {
                let media = w.media.clone();
                let h = header(upload, i);
                slow.push(tokio::task::spawn_local(async move {
                    let body = futures::stream::iter([Ok(Bytes::from_static(&[1]))])
                        .chain(futures::stream::pending());
                    media.chunk(owner, h, body.boxed_local()).await
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            slow.iter().all(|t| !t.is_finished()),
            "a slow sender was cut"
        );
        let bytes = vec![7u8; CHUNK as usize];
        let whole = |upload: u64, bytes: &[u8]| ChunkHeader {
            sha256: Sha256::digest(bytes).to_vec(),
            ..header(upload, 0)
        };
        let ben = start(BEN).await;
        w.media
            .chunk(
                BEN,
                whole(ben, &bytes),
                futures::stream::iter([Ok(Bytes::from(bytes.clone()))]).boxed_local(),
            )
            .await
            .expect("ben's chunk goes through");
        for t in slow {
            t.abort();
            let _ = t.await;
        }
        // Sixty-four chunks nearly all sent hold the node's chunk memory: the next
        // chunk's bytes are refused at once, and taken again once those senders go.
        let mut full = Vec::new();
        for owner in 2_000..2_008u64 {
            let upload = start(owner).await;
            for i in 0..8 {
                let media = w.media.clone();
                let h = header(upload, i);
                full.push(tokio::task::spawn_local(async move {
                    let most = Bytes::from(vec![1u8; CHUNK as usize - 1]);
                    let body = futures::stream::iter([Ok(most)]).chain(futures::stream::pending());
                    media.chunk(owner, h, body.boxed_local()).await
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let cat = start(CAT).await;
        let refused = w
            .media
            .chunk(
                CAT,
                whole(cat, &bytes),
                futures::stream::iter([Ok(Bytes::from(bytes.clone()))]).boxed_local(),
            )
            .await;
        assert!(matches!(refused, Err(Error::Overloaded)), "{refused:?}");
        // Once those have gone a while without a byte, a chunk that is moving cuts the
        // longest stalled to make room (a sender may not send most of a chunk, then a
        // byte now and then, to hold the memory).
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        w.media
            .chunk(
                CAT,
                whole(cat, &bytes),
                futures::stream::iter([Ok(Bytes::from(bytes.clone()))]).boxed_local(),
            )
            .await
            .expect("room made by cutting a stalled chunk");
        let mut cut = 0;
        for t in full {
            if t.is_finished() {
                let r = t.await.expect("task");
                assert!(matches!(r, Err(Error::Overloaded)), "{r:?}");
                cut += 1;
            } else {
                t.abort();
                let _ = t.await;
            }
        }
        assert_eq!(cut, 1, "one stalled chunk was cut for one that needed room");
        let next = ChunkHeader {
            sha256: Sha256::digest(&bytes).to_vec(),
            ..header(cat, 1)
        };
        w.media
            .chunk(
                CAT,
                next,
                futures::stream::iter([Ok(Bytes::from(bytes))]).boxed_local(),
            )
            .await
            .expect("the memory came back");
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

/// Deleting an account erases its media: objects whatever uses them (a post here),
/// unused ones, unfinished uploads, their files and their quota; others' media stays,
/// and a use recorded afterwards (a forward of an old message) is refused.
#[test]
fn erasing_an_account_removes_all_its_media_whatever_uses_it() {
    local(async {
        let w = world().await;
        let posted = w.ready(ANA).await;
        let unused = w.ready(ANA).await;
        let bens = w.ready(BEN).await;
        w.posts
            .publish(
                ANA,
                NewPost {
                    media_ids: vec![posted],
                    ..NewPost::text("look")
                },
            )
            .await
            .expect("post");
        let bytes = jpeg();
        let open = w
            .media
            .init(
                ANA,
                NewUpload {
                    kind: Kind::Image,
                    size: bytes.len() as u64,
                    sha256: Sha256::digest(&bytes).to_vec(),
                    alt_text: String::new(),
                },
            )
            .await
            .expect("an unfinished upload");
        let files_before = w.blob_files();
        assert_eq!(w.media.erase_owner(ANA).await.expect("erased"), 2);
        for id in [posted, unused] {
            assert!(matches!(
                w.media.get(ANA, id).await,
                Err(Error::NotFound(_))
            ));
        }
        assert!(matches!(
            w.media.resume(ANA, open.upload_id).await,
            Err(Error::NotFound(_))
        ));
        assert_eq!(w.usage(ANA).await, 0, "nothing counted against the quota");
        for table in [&t::OWNED, &t::OPEN] {
            let rows = w
                .store
                .scan(table, &tables::key(ANA), &selfie_storage::Scan::all(10))
                .await
                .expect("scan");
            assert!(rows.rows.is_empty(), "{} rows left", table.name);
        }
        assert!(w.blob_files() < files_before, "the files went");
        let refs = w
            .store
            .scan(
                &t::REFS,
                &tables::key(posted),
                &selfie_storage::Scan::all(10),
            )
            .await
            .expect("refs");
        assert!(refs.rows.is_empty(), "the post's use went with it");
        // Ben's photo is untouched.
        assert_eq!(
            w.media.get(BEN, bens).await.expect("his").state,
            State::Ready
        );
        // Again: nothing left to do.
        assert_eq!(w.media.erase_owner(ANA).await.expect("erased"), 0);
        // A use recorded afterwards is refused.
        let mut ids = IdGenerator::new(1, 3).expect("ids");
        let post = ids.next(w.clock.now_ms()).0;
        let r = t::attach(&w.store, &[posted], Use::Post(post), "media_ids").await;
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    });
}

/// A chunk's record is written without an fsync of its own (its bytes are durable
/// first). A crash that loses the record only makes the chunk be sent again: the resume
/// offset stops before it, completion waits for it, and the object completes whole.
#[test]
fn a_chunk_record_lost_in_a_crash_only_makes_the_chunk_be_sent_again() {
    local(async {
        let w = world().await;
        // A noise photo of several chunks.
        let bytes = encode_jpeg(image::RgbImage::from_fn(640, 480, |x, y| {
            let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) as u8;
            image::Rgb([v, v.rotate_left(3), v.rotate_left(5)])
        }));
        assert!(bytes.len() > 2 * CHUNK as usize, "{} bytes", bytes.len());
        let sha = Sha256::digest(&bytes);
        let open = w
            .media
            .init(
                ANA,
                NewUpload {
                    kind: Kind::Image,
                    size: bytes.len() as u64,
                    sha256: sha.to_vec(),
                    alt_text: String::new(),
                },
            )
            .await
            .expect("init");
        staged(&w.media, ANA, open.upload_id, &bytes).await;
        let resumed = w.media.resume(ANA, open.upload_id).await.expect("resume");
        assert_eq!(resumed.offset, bytes.len() as u64);
        // The crash: the second chunk's record is gone, its bytes are not.
        w.store
            .delete(&t::CHUNKS, &tables::key(open.upload_id), &tables::key(1))
            .await
            .expect("lost");
        let resumed = w.media.resume(ANA, open.upload_id).await.expect("resume");
        assert_eq!(
            resumed.offset,
            u64::from(CHUNK),
            "resumes at the lost chunk"
        );
        assert!(
            matches!(
                w.media.complete(ANA, open.upload_id, &sha).await,
                Err(Error::InvalidArgument { .. })
            ),
            "not complete without it"
        );
        // The client sends from the offset again.
        let again = &bytes[CHUNK as usize..];
        for (i, piece) in again.chunks(CHUNK as usize).enumerate() {
            let header = ChunkHeader {
                upload_id: open.upload_id,
                offset: u64::from(CHUNK) * (i as u64 + 1),
                length: piece.len() as u32,
                sha256: Sha256::digest(piece).to_vec(),
            };
            let body = futures::stream::iter([Ok(Bytes::copy_from_slice(piece))]).boxed_local();
            w.media.chunk(ANA, header, body).await.expect("chunk again");
        }
        let done = w
            .media
            .complete(ANA, open.upload_id, &sha)
            .await
            .expect("complete");
        assert_eq!(done.size, bytes.len() as u64);
    });
}

/// A GIF declared as an image is held to the GIF limit when its bytes show what it is
/// (the size was checked against the declared kind at `init`): refused at completion,
/// and the upload ends there.
#[test]
fn a_gif_declared_as_an_image_is_held_to_the_gif_limit() {
    local(async {
        let mut out = Vec::new();
        {
            let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
            let frames = (0..4u32).map(|i| {
                let img = image::RgbaImage::from_fn(96, 96, |x, y| {
                    let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ i) as u8;
                    image::Rgba([v, v.rotate_left(3), v.rotate_left(5), 255])
                });
                image::Frame::from_parts(img, 0, 0, image::Delay::from_numer_denom_ms(100, 1))
            });
            enc.encode_frames(frames).expect("gif");
        }
        let gif = out;
        let w = world_with(MediaConfig {
            chunk_bytes: CHUNK,
            max_gif_bytes: gif.len() as u64 - 1,
            ..MediaConfig::default()
        })
        .await;
        let sha = Sha256::digest(&gif);
        let declared = |kind| NewUpload {
            kind,
            size: gif.len() as u64,
            sha256: sha.to_vec(),
            alt_text: String::new(),
        };
        assert!(matches!(
            w.media.init(ANA, declared(Kind::Gif)).await,
            Err(Error::TooLarge(_))
        ));
        let open = w
            .media
            .init(ANA, declared(Kind::Image))
            .await
            .expect("within the image limit");
        staged(&w.media, ANA, open.upload_id, &gif).await;
        assert!(matches!(
            w.media.complete(ANA, open.upload_id, &sha).await,
            Err(Error::TooLarge(_))
        ));
        assert!(matches!(
            w.media.resume(ANA, open.upload_id).await,
            Err(Error::NotFound(_))
        ));
    });
}

/// Sends all of `bytes` as chunks of `upload_id` (not completed).
async fn staged(media: &Media<S>, owner: u64, upload_id: u64, bytes: &[u8]) {
    for (i, piece) in bytes.chunks(CHUNK as usize).enumerate() {
        let header = ChunkHeader {
            upload_id,
            offset: i as u64 * u64::from(CHUNK),
            length: piece.len() as u32,
            sha256: Sha256::digest(piece).to_vec(),
        };
        let body = futures::stream::iter([Ok(Bytes::copy_from_slice(piece))]).boxed_local();
        media.chunk(owner, header, body).await.expect("chunk");
    }
}

/// Races with an erasure: an upload staged on another node cannot be completed after
/// it, an upload completing once the account is marked deleted removes its own object,
/// and a deleted account starts no upload.
#[test]
fn uploads_racing_an_account_erasure_leave_nothing_behind() {
    local(async {
        let w = world().await;
        let bytes = jpeg();
        let new = || NewUpload {
            kind: Kind::Image,
            size: bytes.len() as u64,
            sha256: Sha256::digest(&bytes).to_vec(),
            alt_text: String::new(),
        };
        // Staged on node 2; erased from node 1.
        let other = w.other_node(2);
        let there = other.init(ANA, new()).await.expect("init on node 2");
        staged(&other, ANA, there.upload_id, &bytes).await;
        // Staged here, to be completed after the owner is marked deleted.
        let here = w.media.init(ANA, new()).await.expect("init");
        staged(&w.media, ANA, here.upload_id, &bytes).await;
        Users::new(w.store.clone())
            .mark_deleted(ANA)
            .await
            .expect("marked deleted");
        let late = w
            .media
            .complete(ANA, here.upload_id, &Sha256::digest(&bytes))
            .await;
        assert!(matches!(late, Err(Error::NotFound("user"))), "{late:?}");
        assert!(matches!(
            w.media.init(ANA, new()).await,
            Err(Error::NotFound("user"))
        ));
        assert_eq!(w.media.erase_owner(ANA).await.expect("erased"), 0);
        let r = other
            .complete(ANA, there.upload_id, &Sha256::digest(&bytes))
            .await;
        assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");
        assert_eq!(w.usage(ANA).await, 0);
        for table in [&t::OWNED, &t::OPEN] {
            let rows = w
                .store
                .scan(table, &tables::key(ANA), &selfie_storage::Scan::all(10))
                .await
                .expect("scan");
            assert!(rows.rows.is_empty(), "{} rows left", table.name);
        }
    });
}

/// The key the test node signs media URLs with.
const URL_KEY: &[u8] = b"test fleet key";

/// Signed URLs: the viewer's right is remembered for ten seconds (an HLS playback's
/// segments ask once), so a right lost takes effect after that; an expired URL is
/// refused whatever is remembered.
#[test]
fn a_signed_url_stops_working_when_its_viewer_loses_the_right() {
    local(async {
        let w = world().await;
        let id = w.ready(ANA).await;
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
        let (url, expires) = w.media.url(BEN, id, "").await.expect("minted for Ben");
        let path = url.strip_prefix("https://media.test").expect("origin");
        let served = w.media.signed(path).await.expect("served");
        assert_eq!(served.target.name, "large");
        // The post goes (its media is not released in this world): Ben's right is gone,
        // remembered for ten seconds more, then refused.
        w.posts.delete(ANA, post.post_id).await.expect("deleted");
        assert!(w.media.signed(path).await.is_ok(), "remembered");
        w.clock.advance(Duration::from_secs(11));
        assert!(matches!(
            w.media.signed(path).await,
            Err(Error::NotFound(_))
        ));
        // The owner's URL works until it expires, not after.
        let (own, own_expires) = w.media.url(ANA, id, "original").await.expect("owner");
        let own = own.strip_prefix("https://media.test").expect("origin");
        assert!(w.media.signed(own).await.is_ok());
        w.clock.advance(Duration::from_millis(
            own_expires.max(expires) - w.clock.now_ms(),
        ));
        assert!(matches!(
            w.media.signed(own).await,
            Err(Error::Forbidden("expired URL"))
        ));
    });
}

/// A one-second 64×64 H.264 MP4 of ffmpeg's test pattern at `fps` frames a second.
fn clip_at(dir: &std::path::Path, fps: u32) -> PathBuf {
    clip_in(dir, fps, "mp4")
}

/// A one-second 64×64 H.264 clip at `fps` frames a second, in the container named by
/// `extension` (`mkv`: Matroska, which WebM is, and which says no frame rate).
fn clip_in(dir: &std::path::Path, fps: u32, extension: &str) -> PathBuf {
    let path = dir.join(format!("clip-{fps}.{extension}"));
    let out = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=duration=1:size=64x64:rate={fps}"))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&path)
        .output()
        .expect("ffmpeg runs (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// A video with more frames a second than any camera makes (each one decoded is work)
/// is refused at the probe, before any is decoded, whether its container says its rate
/// (MP4) or not (Matroska/WebM); an ordinary one passes.
#[tokio::test]
async fn a_video_with_thousands_of_frames_a_second_is_refused_at_the_probe() {
    use selfie_services::media::process::Refusal;
    use selfie_services::media::video;
    let dir = tempfile::tempdir().expect("dir");
    let ordinary = video::probe(&clip_at(dir.path(), 30), "video/mp4")
        .await
        .expect("30 frames a second");
    assert_eq!((ordinary.width, ordinary.height), (64, 64));
    let fast = video::probe(&clip_at(dir.path(), 2000), "video/mp4").await;
    assert!(
        matches!(
            fast,
            Err(Error::UnsupportedMedia(Refusal::TooManyFrames { fps })) if fps >= 1000
        ),
        "{fast:?}"
    );
    // Matroska (WebM's container) says "0/0" for the rate: the packets are counted.
    let ordinary = video::probe(&clip_in(dir.path(), 30, "mkv"), "video/webm")
        .await
        .expect("30 frames a second");
    assert_eq!((ordinary.width, ordinary.height), (64, 64));
    let fast = video::probe(&clip_in(dir.path(), 2000, "mkv"), "video/webm").await;
    assert!(
        matches!(
            fast,
            Err(Error::UnsupportedMedia(Refusal::TooManyFrames { fps })) if fps >= 1000
        ),
        "{fast:?}"
    );
}

/// Two inits of one owner racing on two nodes for the last open upload: each reserves,
/// then checks; the one that sees the other's reservation takes its own back. The
/// owner never has more open uploads (or bytes) than allowed, fleet-wide.
#[test]
fn inits_racing_on_two_nodes_keep_the_owners_limits() {
    local(async {
        let w = world_with(MediaConfig {
            chunk_bytes: CHUNK,
            max_open_uploads: 1,
            ..MediaConfig::default()
        })
        .await;
        let node2 = MediaNode::new(
            w.blobs.clone(),
            Staging::open(w.dir.path().join("node2-staging")).expect("staging"),
            w.config,
        );
        let other = Media::new(
            w.store.clone(),
            w.clock.clone(),
            2,
            0,
            node2,
            w.posts.clone(),
        )
        .expect("media");
        let new = || NewUpload {
            kind: Kind::Image,
            size: 1_000,
            sha256: vec![0; 32],
            alt_text: String::new(),
        };
        // Node 1's init has checked and is about to reserve when node 2's runs whole.
        let mut held = w.gate.arm(Op::Put, t::OPEN.name);
        let race = async {
            held.reached().await;
            let r = other.init(ANA, new()).await;
            held.release();
            r
        };
        let (first, second) = tokio::join!(w.media.init(ANA, new()), race);
        let second = second.expect("node 2's init, whole before node 1 reserved");
        assert!(
            matches!(first, Err(Error::QuotaExceeded)),
            "node 1's init went over the limit: {first:?}"
        );
        let open = w
            .store
            .scan(&t::OPEN, &tables::key(ANA), &selfie_storage::Scan::all(10))
            .await
            .expect("open")
            .rows;
        assert_eq!(open.len(), 1, "the refused reservation was taken back");
        other.abort(ANA, second.upload_id).await.expect("aborted");
        w.media.init(ANA, new()).await.expect("room again");
    });
}

/// An object used by 500 posts the viewer cannot read, then by its owner's profile,
/// which the viewer can: each look walks the uses page by page, and past the first page
/// each page costs the viewer a token. A viewer out of tokens is not shown the object
/// (`NotFound`, as for a missing one: `RateLimited` would tell a stranger that the
/// object exists and is used widely) long before the store is walked a thousand times;
/// the owner is not held back.
#[test]
fn a_viewer_walking_an_objects_many_uses_is_cut_off_like_a_missing_object() {
    local(async {
        let w = world().await;
        let photo = w.ready(ANA).await;
        for post in 0..500u64 {
            let use_of = KeyBuilder::new().u64(1).u64(900_000 + post).build();
            w.store
                .put(&t::REFS, &tables::key(photo), &use_of, &[], None)
                .await
                .expect("use");
        }
        // The owner's avatar, after the posts: on the eleventh page.
        let profile = KeyBuilder::new().u64(3).u64(ANA).build();
        w.store
            .put(&t::REFS, &tables::key(photo), &profile, &[], None)
            .await
            .expect("use");
        w.media
            .get(BEN, photo)
            .await
            .expect("seen through the profile");
        let mut cut = None;
        for i in 0..200 {
            match w.media.get(BEN, photo).await {
                Ok(_) => {}
                Err(Error::NotFound(_)) => {
                    cut = Some(i);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        let looks = cut.expect("looks through five hundred uses were never cut off");
        assert!(looks < 10, "cut off only after {looks} more looks");
        // The same answer as for an object that does not exist.
        match w.media.get(BEN, photo + 1).await {
            Err(Error::NotFound(what)) => {
                let Err(Error::NotFound(cut_what)) = w.media.get(BEN, photo).await else {
                    panic!("shown again at once");
                };
                assert_eq!(what, cut_what);
            }
            other => panic!("{other:?}"),
        }
        w.media.get(ANA, photo).await.expect("the owner");
    });
}

/// A completion cut short by a storage fault where it makes the object: nothing of it
/// is left half done; the retry makes the object, counts its bytes once and ends the
/// upload.
#[test]
fn a_completion_cut_short_by_a_storage_fault_counts_the_bytes_once() {
    local(async {
        let w = world().await;
        let bytes = jpeg();
        let size = bytes.len() as u64;
        let upload = w.staged(ANA, bytes).await;
        w.gate.fail(Op::Commit, "");
        let cut = w.media.complete(ANA, upload.upload_id, &[]).await;
        assert!(cut.is_err(), "{cut:?}");
        assert!(
            t::load(&w.store, upload.media_id)
                .await
                .expect("load")
                .is_none(),
            "an object without its bytes counted"
        );
        assert_eq!(w.usage(ANA).await, 0);
        let made = w
            .media
            .complete(ANA, upload.upload_id, &[])
            .await
            .expect("the retry");
        assert_eq!(made.media_id, upload.media_id);
        let again = w
            .media
            .complete(ANA, upload.upload_id, &[])
            .await
            .expect("answered again");
        assert_eq!(again.media_id, upload.media_id);
        assert_eq!(w.usage(ANA).await, size as i64, "counted once");
        let open = w
            .store
            .scan(&t::OPEN, &tables::key(ANA), &selfie_storage::Scan::all(10))
            .await
            .expect("open")
            .rows;
        assert!(open.is_empty(), "the reservation outlived the upload");
        w.media
            .settled(upload.media_id, Duration::from_secs(30))
            .await
            .expect("processed");

        // As on CQL: the object made (the commit's condition) and its other writes lost.
        // The retry finishes what was left: the upload ends, its reservation goes, the
        // object is processed.
        let bytes = encode_jpeg(image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([x as u8, y as u8, 7])
        }));
        let upload = w.staged(ANA, bytes).await;
        w.gate.fail(Op::CommitWrites, "");
        let cut = w.media.complete(ANA, upload.upload_id, &[]).await;
        assert!(cut.is_err(), "{cut:?}");
        assert!(
            t::load(&w.store, upload.media_id)
                .await
                .expect("load")
                .is_some()
        );
        let made = w
            .media
            .complete(ANA, upload.upload_id, &[])
            .await
            .expect("the retry finishes it");
        assert_eq!(made.media_id, upload.media_id);
        let open = w
            .store
            .scan(&t::OPEN, &tables::key(ANA), &selfie_storage::Scan::all(10))
            .await
            .expect("open")
            .rows;
        assert!(open.is_empty(), "the reservation outlived the upload");
        let ready = w
            .media
            .settled(upload.media_id, Duration::from_secs(30))
            .await
            .expect("processed");
        assert_eq!(ready.state, State::Ready);
        let again = w.media.complete(ANA, upload.upload_id, &[]).await;
        assert_eq!(again.expect("answered").state, State::Ready);
    });
}
