//! Workflows that span services: registration (account, then profile), account deletion
//! (every service removes what it holds for the user), and the profile view (profile,
//! counts, relationship). They live here, beside the domain, so that the wire layer stays
//! a decoder and every new service joins a workflow in one line.

use std::net::IpAddr;
use std::rc::Rc;

use futures::future::LocalBoxFuture;
use selfie_storage::Store;

use crate::Result;
use crate::auth::accounts::{Accounts, IssuedTokens};
use crate::graph::lists::Lists;
use crate::graph::{Graph, Relationship};
use crate::plane::Principal;
use crate::posts::Posts;
use crate::users::{Profile, Users};

/// A service's share of account deletion: it removes what it keeps for the user.
pub trait Erase {
    /// Removes every row this service keeps for `user` (idempotent: a retry after a
    /// failure finishes the job) and says how many went.
    fn erase_user(&self, user: u64) -> LocalBoxFuture<'_, Result<usize>>;
}

/// The domain services of one shard.
pub struct Services<S> {
    /// Accounts, sessions and credentials.
    pub accounts: Rc<Accounts<S>>,
    /// Profiles and settings.
    pub users: Rc<Users<S>>,
    /// The follow graph.
    pub graph: Rc<Graph<S>>,
    /// User lists.
    pub lists: Rc<Lists<S>>,
    /// Posts.
    pub posts: Rc<Posts<S>>,
    /// This shard's media service, when the node serves media (set once it is built).
    pub media: std::cell::OnceCell<Rc<crate::media::Media<S>>>,
    /// The other services' shares of account deletion (feeds, stories, notifications),
    /// by name, run in order.
    pub erasers: std::cell::RefCell<Vec<(&'static str, Rc<dyn Erase>)>>,
    /// Accounts being deleted on this shard right now.
    pub deleting: Rc<std::cell::RefCell<std::collections::HashSet<u64>>>,
}

/// An account deletion under way (ends when dropped, however the request ends).
struct Deleting {
    running: Rc<std::cell::RefCell<std::collections::HashSet<u64>>>,
    user: u64,
}

impl Deleting {
    fn start(
        running: &Rc<std::cell::RefCell<std::collections::HashSet<u64>>>,
        user: u64,
    ) -> Option<Self> {
        running.borrow_mut().insert(user).then(|| Self {
            running: running.clone(),
            user,
        })
    }
}

impl Drop for Deleting {
    fn drop(&mut self) {
        self.running.borrow_mut().remove(&self.user);
    }
}

/// A profile as a viewer sees it: the profile, its counts and how the viewer relates.
#[derive(Debug, Clone)]
pub struct ProfileView {
    /// The profile.
    pub profile: Profile,
    /// Followers.
    pub followers: i64,
    /// Following.
    pub following: i64,
    /// Posts and reposts.
    pub posts: i64,
    /// How the viewer relates to the user.
    pub relationship: Relationship,
}

impl<S: Store + Clone + 'static> Services<S> {
    /// Creates an account, signs it in on `device`, and creates its profile. The profile
    /// step is idempotent, so a client that saw a storage failure can log in and go on.
    /// The e-mail address is claimed only once its owner proves it (`verify_email`).
    pub async fn register(
        &self,
        username: &str,
        email: &str,
        password: String,
        device: &str,
        ip: IpAddr,
    ) -> Result<IssuedTokens> {
        let tokens = self
            .accounts
            .register(username, email, password, device, ip)
            .await?;
        self.users.create(tokens.user_id, username).await?;
        Ok(tokens)
    }

    /// Deletes the caller's account (password, and the second factor when enrolled).
    ///
    /// The owner's other devices are signed out first (nothing acts for the account while
    /// it goes); then each service removes what it holds — the profile is anonymised and
    /// hidden (its posts with it), graph edges and lists go, the posts are deleted, each
    /// service in [`Services::erasers`] removes its rows (home timeline, "not
    /// interested" marks, stories, highlights, tray, notifications, push tokens), every
    /// media object and unfinished upload is erased — and the credentials go last. Every
    /// step is idempotent and a failure leaves the account and this session in place, so
    /// the owner can simply retry.
    pub async fn delete_account(
        &self,
        caller: &Principal,
        password: String,
        code: Option<&str>,
    ) -> Result<()> {
        let user = caller.user_id;
        // One deletion of an account at a time on this shard (the caller's owner): a
        // retry while the first still runs is told to wait, not run it twice.
        let Some(_running) = Deleting::start(&self.deleting, user) else {
            return Err(crate::Error::Busy);
        };
        self.accounts.confirm_deletion(user, password, code).await?;
        self.accounts.revoke_others(user, caller.session_id).await?;
        self.users.mark_deleted(user).await?;
        self.graph.remove_user(user).await?;
        let posts = self.posts.erase_author(user).await?;
        tracing::info!(user, posts, "account posts deleted");
        let erasers = self.erasers.borrow().clone();
        for (service, eraser) in erasers {
            let rows = eraser.erase_user(user).await?;
            tracing::info!(user, service, rows, "account rows erased");
        }
        // A post that passed its check just before the profile was marked and committed
        // after the first pass goes now; and the profile is marked again, in case an
        // edit that read it before the mark wrote it back.
        self.posts.erase_author(user).await?;
        self.users.mark_deleted(user).await?;
        if let Some(media) = self.media.get() {
            let erased = media.erase_owner(user).await?;
            tracing::info!(user, erased, "account media erased");
        }
        self.accounts.erase(user).await
    }

    /// `profile` as `viewer` sees it.
    pub async fn profile_view(&self, viewer: u64, profile: Profile) -> Result<ProfileView> {
        let target = profile.user_id;
        let (followers, following) = self.graph.counts(target).await?;
        Ok(ProfileView {
            followers,
            following,
            posts: self.users.posts_count(target).await?,
            relationship: self.graph.relationship(viewer, target).await?,
            profile,
        })
    }
}
