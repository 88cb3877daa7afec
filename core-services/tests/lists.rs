//! User lists: who may see and change them, members across blocks and deletions, limits;
//! the same body on the embedded store and on the real CQL server.

use std::sync::Arc;

use selfie_services::Error;
use selfie_services::graph::Graph;
use selfie_services::graph::lists::{ListUpdate, Lists, MAX_LISTS};
use selfie_services::schema;
use selfie_services::users::Users;
use selfie_storage::cql::{CqlConfig, CqlStore};
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::{Store, SystemClock};

const OWNER: u64 = 1;
const FAN: u64 = 2;
const FRIEND: u64 = 3;
const STRANGER: u64 = 4;
const VICTIM: u64 = 5; // blocked by the owner

async fn lists_rules<S: Store + Clone + 'static>(store: S) {
    let users = Users::new(store.clone());
    for (id, name) in [
        (OWNER, "owner"),
        (FAN, "fan"),
        (FRIEND, "friend"),
        (STRANGER, "stranger"),
        (VICTIM, "victim"),
    ] {
        users.create(id, name).await.expect("profile");
    }
    let graph = Graph::new(store.clone());
    graph.block(OWNER, VICTIM).await.expect("block");
    let lists = Lists::new(store.clone(), Arc::new(SystemClock), 1, 0).expect("lists");
    let public = lists
        .create(OWNER, "photographers", "people I learn from", false)
        .await
        .expect("list");
    let private = lists
        .create(OWNER, "watching", "", true)
        .await
        .expect("list");
    for bad in ["", "   ", &"x".repeat(51), "tab\tname"] {
        assert!(matches!(
            lists.create(OWNER, bad, "", false).await,
            Err(Error::InvalidArgument { field: "name" })
        ));
    }
    // Members: existing users without a block with the owner; the whole request or nothing.
    lists
        .add_members(OWNER, public.list_id, &[FAN, FRIEND, FAN])
        .await
        .expect("added");
    for bad in [vec![STRANGER, 999], vec![VICTIM]] {
        assert!(matches!(
            lists.add_members(OWNER, public.list_id, &bad).await,
            Err(Error::NotFound(_))
        ));
    }
    assert_eq!(lists.members_count(public.list_id).await.expect("count"), 2);
    // Only the owner changes a list; a private list does not exist for others.
    assert!(matches!(
        lists
            .add_members(STRANGER, public.list_id, &[STRANGER])
            .await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        lists.delete(FAN, public.list_id).await,
        Err(Error::Forbidden(_))
    ));
    for viewer in [STRANGER, FAN] {
        assert!(matches!(
            lists.get(viewer, private.list_id).await,
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            lists.members(viewer, private.list_id, 10, None).await,
            Err(Error::NotFound(_))
        ));
    }
    let seen = |v: Vec<(selfie_services::graph::lists::UserList, i64)>| {
        v.into_iter()
            .map(|(l, n)| (l.list_id, n))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        seen(
            lists
                .of_owner(STRANGER, OWNER, 10, None)
                .await
                .expect("lists")
                .0
        ),
        vec![(public.list_id, 2)]
    );
    assert_eq!(
        seen(
            lists
                .of_owner(OWNER, OWNER, 10, None)
                .await
                .expect("lists")
                .0
        ),
        vec![(public.list_id, 2), (private.list_id, 0)]
    );
    // Across a block the owner and their lists do not exist.
    assert!(matches!(
        lists.get(VICTIM, public.list_id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        lists.of_owner(VICTIM, OWNER, 10, None).await,
        Err(Error::NotFound(_))
    ));
    // A member who blocks the owner, or the viewer, leaves the visible member list.
    assert_eq!(
        lists
            .members(STRANGER, public.list_id, 10, None)
            .await
            .expect("members")
            .ids,
        vec![FAN, FRIEND]
    );
    graph.block(FRIEND, STRANGER).await.expect("block");
    assert_eq!(
        lists
            .members(STRANGER, public.list_id, 10, None)
            .await
            .expect("members")
            .ids,
        vec![FAN]
    );
    graph.block(FAN, OWNER).await.expect("block");
    assert!(
        lists
            .members(OWNER, public.list_id, 10, None)
            .await
            .expect("members")
            .ids
            == vec![FRIEND]
    );
    // Updates; going private hides the list at once.
    let renamed = lists
        .update(
            OWNER,
            public.list_id,
            ListUpdate {
                name: Some("mentors".into()),
                private: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!((renamed.name.as_str(), renamed.private), ("mentors", true));
    assert!(matches!(
        lists.get(STRANGER, public.list_id).await,
        Err(Error::NotFound(_))
    ));
    // Removing members and deleting lists; the owner's count comes back down.
    lists
        .remove_members(OWNER, public.list_id, &[FRIEND, STRANGER])
        .await
        .expect("removed");
    assert_eq!(lists.members_count(public.list_id).await.expect("count"), 1);
    lists.delete(OWNER, private.list_id).await.expect("deleted");
    assert!(matches!(
        lists.get(OWNER, private.list_id).await,
        Err(Error::NotFound(_))
    ));
    for i in 1..MAX_LISTS {
        lists
            .create(OWNER, &format!("list {i}"), "", false)
            .await
            .expect("within the limit");
    }
    assert!(matches!(
        lists.create(OWNER, "one too many", "", false).await,
        Err(Error::InvalidArgument { field: "lists" })
    ));
    // A private account's lists are for its approved followers.
    users
        .update(
            FRIEND,
            selfie_services::users::ProfileUpdate {
                private: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("private");
    let pals = lists.create(FRIEND, "pals", "", false).await.expect("list");
    assert!(matches!(
        lists.get(VICTIM, pals.list_id).await,
        Err(Error::NotFound(_))
    ));
    graph.follow(VICTIM, FRIEND).await.expect("requested");
    graph.approve(FRIEND, VICTIM).await.expect("approved");
    lists
        .get(VICTIM, pals.list_id)
        .await
        .expect("a follower sees it");
    lists.delete(FRIEND, pals.list_id).await.expect("deleted");
    // Account deletion takes the owner's lists and the user's memberships with it.
    let other = lists
        .create(FRIEND, "friends", "", false)
        .await
        .expect("list");
    lists
        .add_members(FRIEND, other.list_id, &[FAN, OWNER])
        .await
        .expect("added");
    graph.remove_user(FAN).await.expect("fan deleted");
    assert_eq!(lists.members_count(other.list_id).await.expect("count"), 1);
    graph.remove_user(OWNER).await.expect("owner deleted");
    assert_eq!(lists.members_count(other.list_id).await.expect("count"), 0);
    assert!(
        lists
            .of_owner(OWNER, OWNER, 10, None)
            .await
            .expect("lists")
            .0
            .is_empty()
    );
    assert!(matches!(
        lists.get(FRIEND, public.list_id).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn lists_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("dir");
    let store =
        EmbeddedStore::open(dir.path(), &schema::tables(), Arc::new(SystemClock)).expect("store");
    lists_rules(store).await;
}

#[tokio::test]
async fn lists_on_cql() {
    let nodes = std::env::var("SELFIE_CQL_NODES").expect(
        "SELFIE_CQL_NODES is not set: run the tests with scripts/test (it starts a CQL server)",
    );
    let config = CqlConfig::from_url(&format!(
        "cql://{nodes}/lists_{:08x}",
        rand::random::<u32>()
    ))
    .expect("url");
    let store = CqlStore::open(&config, schema::MIGRATIONS, &schema::tables())
        .await
        .expect("store")
        .drop_keyspace_when_dropped(&config);
    lists_rules(store).await;
}
