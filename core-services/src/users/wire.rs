//! The `Users` service on the wire: profiles (as the viewer sees them), the caller's own
//! profile and settings, lookups. Every operation acts as the session's user; a client
//! can never act for another user, whatever ids it sends.

use std::rc::Rc;

use bytes::Bytes;
use selfie_protocol::common::UserSummaryT;
use selfie_protocol::users::{self as pu, UsersOp, UsersOpT};
use selfie_storage::Store;

use super::{
    Link, MAX_LINKS, MAX_LOOKUP, Permission, Profile, ProfileUpdate, Settings, SettingsUpdate,
};
use crate::plane::{Call, ids, make, service_table, wire_enum};
use crate::workflows::{ProfileView, Services};
use crate::{Error, Result};

/// The users service of one shard, on the wire.
#[derive(Clone)]
pub struct UsersWire<S>(pub Rc<Services<S>>);

service_table! {
    impl[S: Store + Clone + 'static] UsersWire<S>;
    body body_as_users, ops UsersOp, answers UsersOpT in Users(pu::UsersT);
    GetProfileRequest(op_as_get_profile_request) => get_profile;
    UpdateProfileRequest(op_as_update_profile_request) => update_profile;
    GetSettingsRequest(op_as_get_settings_request) => settings;
    UpdateSettingsRequest(op_as_update_settings_request) => update_settings;
    LookupUsersRequest(op_as_lookup_users_request) => lookup;
}

use pu::Permission as WirePermission;
wire_enum!(permission, wire_permission: Permission <=> WirePermission, "permission"
    { Everyone, Followers, Following, Nobody });

fn summary(p: &mut Profile) -> UserSummaryT {
    make!(UserSummaryT {
        user_id: p.user_id,
        username: Some(std::mem::take(&mut p.username)),
        display_name: Some(std::mem::take(&mut p.display_name)),
        avatar_media_id: p.avatar_media_id,
        private: p.private,
        deleted: p.deleted,
    })
}

fn profile_t(v: ProfileView) -> pu::ProfileT {
    let (mut p, r) = (v.profile, v.relationship);
    let links = p.links.drain(..).map(|l| {
        make!(pu::ProfileLinkT {
            title: Some(l.title),
            url: Some(l.url),
        })
    });
    make!(pu::ProfileT {
        links: Some(links.collect()),
        user: Some(Box::new(summary(&mut p))),
        bio: Some(p.bio),
        banner_media_id: p.banner_media_id,
        created_at_ms: p.created_at_ms,
        followers_count: v.followers.max(0) as u64,
        following_count: v.following.max(0) as u64,
        posts_count: v.posts.max(0) as u64,
        relationship: Some(Box::new(make!(pu::RelationshipT {
            following: r.following,
            followed_by: r.followed_by,
            follow_requested: r.requested,
            follow_request_received: r.request_received,
            blocking: r.blocking,
            blocked_by: r.blocked_by,
            muting: r.muting,
            close_friend: r.close_friend,
        }))),
        pronouns: Some(p.pronouns),
        location: Some(p.location),
    })
}

impl<S: Store + Clone + 'static> UsersWire<S> {
    /// Answers with `profile` as the caller sees it.
    async fn view(&self, call: &Call, profile: Profile) -> Result<Bytes> {
        let view = self.0.profile_view(call.user()?, profile).await?;
        let profile = Some(Box::new(profile_t(view)));
        let answer = make!(pu::GetProfileResponseT { profile });
        Self::answer(call, UsersOpT::GetProfileResponse(Box::new(answer)))
    }

    fn answer_settings(call: &Call, s: Settings) -> Result<Bytes> {
        let settings = make!(pu::SettingsT {
            who_can_message: wire_permission(s.who_can_message),
            who_can_mention: wire_permission(s.who_can_mention),
            who_can_comment: wire_permission(s.who_can_comment),
            show_read_receipts: s.show_read_receipts,
            show_activity_status: s.show_activity_status,
            show_sensitive_media: s.show_sensitive_media,
            language: Some(s.language),
            timezone: Some(s.timezone),
            email_notifications: s.email_notifications,
        });
        let answer = make!(pu::SettingsResponseT {
            settings: Some(Box::new(settings)),
        });
        Self::answer(call, UsersOpT::SettingsResponse(Box::new(answer)))
    }

    async fn get_profile(self, call: &Call, r: pu::GetProfileRequest<'_>) -> Result<Bytes> {
        let me = call.user()?;
        let profile = match r.username() {
            Some(name) if r.user_id() == 0 => self.0.users.get_by_username(me, name).await?,
            _ => self.0.users.get(me, r.user_id()).await?,
        };
        self.view(call, profile).await
    }

    async fn update_profile(self, call: &Call, r: pu::UpdateProfileRequest<'_>) -> Result<Bytes> {
        let me = call.user()?;
        let links = r.links().map(|v| {
            v.iter()
                .take(MAX_LINKS + 1)
                .map(|l| Link {
                    title: l.title().unwrap_or_default().to_string(),
                    url: l.url().unwrap_or_default().to_string(),
                })
                .collect()
        });
        let update = ProfileUpdate {
            display_name: r.display_name().map(str::to_string),
            bio: r.bio().map(str::to_string),
            private: r.private(),
            avatar_media_id: r.avatar_media_id(),
            banner_media_id: r.banner_media_id(),
            links,
            pronouns: r.pronouns().map(str::to_string),
            location: r.location().map(str::to_string),
        };
        let profile = self.0.users.update(me, update).await?;
        self.view(call, profile).await
    }

    async fn settings(self, call: &Call, _: pu::GetSettingsRequest<'_>) -> Result<Bytes> {
        let s = self.0.users.settings(call.user()?).await?;
        Self::answer_settings(call, s)
    }

    async fn update_settings(self, call: &Call, r: pu::UpdateSettingsRequest<'_>) -> Result<Bytes> {
        let me = call.user()?;
        let perm = |p: Option<WirePermission>, field| {
            p.map(|p| permission(p).map_err(|_| Error::InvalidArgument { field }))
                .transpose()
        };
        let update = SettingsUpdate {
            who_can_message: perm(r.who_can_message(), "who_can_message")?,
            who_can_mention: perm(r.who_can_mention(), "who_can_mention")?,
            who_can_comment: perm(r.who_can_comment(), "who_can_comment")?,
            show_read_receipts: r.show_read_receipts(),
            show_activity_status: r.show_activity_status(),
            show_sensitive_media: r.show_sensitive_media(),
            language: r.language().map(str::to_string),
            timezone: r.timezone().map(str::to_string),
            email_notifications: r.email_notifications(),
        };
        let s = self.0.users.update_settings(me, update).await?;
        Self::answer_settings(call, s)
    }

    async fn lookup(self, call: &Call, r: pu::LookupUsersRequest<'_>) -> Result<Bytes> {
        let names: Vec<String> = r
            .usernames()
            .map(|v| v.iter().take(MAX_LOOKUP + 1).map(str::to_string).collect())
            .unwrap_or_default();
        let wanted = ids(r.user_ids(), MAX_LOOKUP);
        let found = self.0.users.lookup(call.user()?, &wanted, &names).await?;
        let users = Some(found.into_iter().map(|mut p| summary(&mut p)).collect());
        let answer = make!(pu::LookupUsersResponseT { users });
        Self::answer(call, UsersOpT::LookupUsersResponse(Box::new(answer)))
    }
}
