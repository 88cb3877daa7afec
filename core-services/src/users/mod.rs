//! Users: profiles (display name, bio, avatar and banner media ids, links, pronouns,
//! location), the private-account flag, and per-user settings (who may message, mention
//! or comment; read receipts, activity status, sensitive media, language, time zone,
//! e-mail notifications).
//!
//! A profile is readable by anyone the owner has not blocked and who has not blocked the
//! owner; for everyone else it does not exist (`NotFound`, not `Forbidden`, so that a
//! block is not revealed). A private account's profile stays visible; its content, its
//! follower/following lists and its user lists are for approved followers only (enforced
//! by the graph and content services).
//! Settings are the owner's alone; other services consult them through
//! [`crate::tables::users::permits`].
//!
//! An avatar or banner must be a ready image of the user's own (0 clears it); the profile
//! records its use, so anyone not blocked may download it. A replaced picture's use is
//! dropped (the object stays with its owner, who may delete it).

mod wire;

use selfie_storage::Store;

pub use crate::tables::users::{Link, Permission, Profile, Settings};
use crate::tables::users::{PROFILES, SETTINGS};
use crate::tables::{self, encode, key};
use crate::{Error, Result};
pub use wire::UsersWire;

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 64;
/// Longest bio, in characters.
pub const MAX_BIO: usize = 300;
/// Most links on a profile.
pub const MAX_LINKS: usize = 5;
/// Longest link title, in characters.
pub const MAX_LINK_TITLE: usize = 64;
/// Longest link URL, in bytes.
pub const MAX_LINK_URL: usize = 512;
/// Longest pronouns, in characters.
pub const MAX_PRONOUNS: usize = 32;
/// Longest location, in characters.
pub const MAX_LOCATION: usize = 64;

/// Changes to a profile; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProfileUpdate {
    /// New display name.
    pub display_name: Option<String>,
    /// New bio.
    pub bio: Option<String>,
    /// New private flag.
    pub private: Option<bool>,
    /// New avatar (0 removes it).
    pub avatar_media_id: Option<u64>,
    /// New banner (0 removes it).
    pub banner_media_id: Option<u64>,
    /// New links (replace all).
    pub links: Option<Vec<Link>>,
    /// New pronouns.
    pub pronouns: Option<String>,
    /// New location.
    pub location: Option<String>,
}

/// Changes to settings; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct SettingsUpdate {
    /// New messaging permission.
    pub who_can_message: Option<Permission>,
    /// New mention permission.
    pub who_can_mention: Option<Permission>,
    /// New comment permission.
    pub who_can_comment: Option<Permission>,
    /// New read-receipts flag.
    pub show_read_receipts: Option<bool>,
    /// New activity-status flag.
    pub show_activity_status: Option<bool>,
    /// New sensitive-media flag.
    pub show_sensitive_media: Option<bool>,
    /// New language tag.
    pub language: Option<String>,
    /// New time zone.
    pub timezone: Option<String>,
    /// New e-mail notifications flag.
    pub email_notifications: Option<bool>,
}

/// Checks a free-text field: at most `max` characters, no control characters (newlines
/// allowed where `multiline`).
fn text(value: String, max: usize, multiline: bool, field: &'static str) -> Result<String> {
    let bad = value
        .chars()
        .any(|c| c.is_control() && !(multiline && c == '\n'));
    if bad || value.chars().count() > max {
        return Err(Error::InvalidArgument { field });
    }
    Ok(value)
}

/// Checks a profile link: a short title and an absolute `http(s)` URL with a host and no
/// credentials.
fn link(l: Link) -> Result<Link> {
    let title = text(l.title, MAX_LINK_TITLE, false, "links")?;
    let bad = || Error::InvalidArgument { field: "links" };
    if l.url.len() > MAX_LINK_URL {
        return Err(bad());
    }
    let url = url::Url::parse(&l.url).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none_or(str::is_empty)
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(bad());
    }
    Ok(Link {
        title,
        url: url.to_string(),
    })
}

/// A BCP 47 tag's shape: a 2–3 letter language, then 1–8 character subtags.
fn language_tag(tag: String) -> Result<String> {
    let mut parts = tag.split('-');
    let ok = tag.is_empty()
        || (tag.len() <= 35
            && parts.next().is_some_and(|p| {
                (2..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic())
            })
            && parts.all(|p| {
                (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric())
            }));
    if ok {
        Ok(tag)
    } else {
        Err(Error::InvalidArgument { field: "language" })
    }
}

/// An IANA time zone name's shape (`Area/Location`, `UTC`, `Etc/GMT+5`).
fn timezone(tz: String) -> Result<String> {
    let ok = tz.is_empty()
        || (tz.len() <= 64
            && tz.split('/').all(|p| {
                !p.is_empty()
                    && p != "."
                    && p != ".."
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+'))
            }));
    if ok {
        Ok(tz)
    } else {
        Err(Error::InvalidArgument { field: "timezone" })
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Most users in one lookup.
pub const MAX_LOOKUP: usize = 100;

/// The users service of one shard.
pub struct Users<S> {
    store: S,
}

impl<S: Store> Users<S> {
    /// Over `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// Creates the profile of a new account (idempotent).
    pub async fn create(&self, user_id: u64, username: &str) -> Result<Profile> {
        let profile = Profile {
            user_id,
            username: username.to_string(),
            display_name: username.to_string(),
            bio: String::new(),
            private: false,
            deleted: false,
            avatar_media_id: 0,
            banner_media_id: 0,
            links: Vec::new(),
            pronouns: String::new(),
            location: String::new(),
            created_at_ms: now_ms(),
        };
        let bytes = encode("profile", &profile)?;
        if !self
            .store
            .insert_if_absent(&PROFILES, &key(user_id), &[], &bytes, None)
            .await?
        {
            return tables::users::profile(&self.store, user_id)
                .await?
                .ok_or(Error::NotFound("user"));
        }
        Ok(profile)
    }

    /// The profile of `user_id` as `viewer` may see it.
    pub async fn get(&self, viewer: u64, user_id: u64) -> Result<Profile> {
        if tables::graph::blocked_either_way(&self.store, viewer, user_id).await? {
            return Err(Error::NotFound("user"));
        }
        tables::users::profile(&self.store, user_id)
            .await?
            .filter(|p| !p.deleted)
            .ok_or(Error::NotFound("user"))
    }

    /// The profile of `username` as `viewer` may see it.
    pub async fn get_by_username(&self, viewer: u64, username: &str) -> Result<Profile> {
        let id = tables::auth::user_by_username(&self.store, username)
            .await?
            .ok_or(Error::NotFound("user"))?;
        self.get(viewer, id).await
    }

    /// The profiles among `ids` and `usernames` that `viewer` may see, in request order,
    /// each once (hidden and unknown users are left out). At most [`MAX_LOOKUP`] in all.
    pub async fn lookup(
        &self,
        viewer: u64,
        ids: &[u64],
        usernames: &[String],
    ) -> Result<Vec<Profile>> {
        if ids.len() + usernames.len() > MAX_LOOKUP {
            return Err(Error::InvalidArgument { field: "user_ids" });
        }
        let mut wanted = ids.to_vec();
        for name in usernames {
            if let Some(id) = tables::auth::user_by_username(&self.store, name).await? {
                wanted.push(id);
            }
        }
        let mut out: Vec<Profile> = Vec::new();
        for id in wanted {
            if out.iter().any(|p| p.user_id == id) {
                continue;
            }
            match self.get(viewer, id).await {
                Ok(p) => out.push(p),
                Err(Error::NotFound("user")) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Anonymises and hides the profile of a deleted account (its username stays
    /// reserved by the accounts service); its settings go.
    pub async fn mark_deleted(&self, user_id: u64) -> Result<()> {
        let Some(mut profile) = tables::users::profile(&self.store, user_id).await? else {
            return Ok(());
        };
        profile.deleted = true;
        profile.display_name.clear();
        profile.bio.clear();
        profile.avatar_media_id = 0;
        profile.banner_media_id = 0;
        profile.links.clear();
        profile.pronouns.clear();
        profile.location.clear();
        let bytes = encode("profile", &profile)?;
        self.store
            .put(&PROFILES, &key(user_id), &[], &bytes, None)
            .await?;
        self.store.delete(&SETTINGS, &key(user_id), &[]).await?;
        Ok(())
    }

    /// Updates the caller's own profile; nothing changes unless every field is valid.
    pub async fn update(&self, user_id: u64, update: ProfileUpdate) -> Result<Profile> {
        let mut profile = tables::users::profile(&self.store, user_id)
            .await?
            .filter(|p| !p.deleted)
            .ok_or(Error::NotFound("user"))?;
        if let Some(name) = update.display_name {
            let name = text(name, MAX_DISPLAY_NAME, false, "display_name")?;
            if name.trim().is_empty() {
                return Err(Error::InvalidArgument {
                    field: "display_name",
                });
            }
            profile.display_name = name;
        }
        if let Some(bio) = update.bio {
            profile.bio = text(bio, MAX_BIO, true, "bio")?;
        }
        if let Some(private) = update.private {
            profile.private = private;
        }
        let (old_avatar, old_banner) = (profile.avatar_media_id, profile.banner_media_id);
        if let Some(id) = update.avatar_media_id {
            profile.avatar_media_id = id;
        }
        if let Some(id) = update.banner_media_id {
            profile.banner_media_id = id;
        }
        if let Some(links) = update.links {
            if links.len() > MAX_LINKS {
                return Err(Error::InvalidArgument { field: "links" });
            }
            profile.links = links.into_iter().map(link).collect::<Result<_, _>>()?;
        }
        if let Some(p) = update.pronouns {
            profile.pronouns = text(p, MAX_PRONOUNS, false, "pronouns")?;
        }
        if let Some(l) = update.location {
            profile.location = text(l, MAX_LOCATION, false, "location")?;
        }
        use tables::media::{Kind, Use};
        let pictures = [
            (old_avatar, profile.avatar_media_id, "avatar_media_id"),
            (old_banner, profile.banner_media_id, "banner_media_id"),
        ];
        for (old, new, field) in pictures {
            if new != old && new != 0 {
                tables::media::check(&self.store, user_id, &[new], &[Kind::Image], field).await?;
            }
        }
        for (old, new, field) in pictures {
            if new != old && new != 0 {
                tables::media::attach(&self.store, &[new], Use::Profile(user_id), field).await?;
            }
        }
        let bytes = encode("profile", &profile)?;
        self.store
            .put(&PROFILES, &key(user_id), &[], &bytes, None)
            .await?;
        let kept = [profile.avatar_media_id, profile.banner_media_id];
        for (old, _, _) in pictures {
            if old != 0 && !kept.contains(&old) {
                tables::media::detach(&self.store, &[old], Use::Profile(user_id)).await?;
            }
        }
        Ok(profile)
    }

    /// How many posts (and reposts) `user_id` has published.
    pub async fn posts_count(&self, user_id: u64) -> Result<i64> {
        tables::posts::author_count(&self.store, user_id).await
    }

    /// The caller's own settings.
    pub async fn settings(&self, user_id: u64) -> Result<Settings> {
        tables::users::settings(&self.store, user_id).await
    }

    /// Updates the caller's own settings; nothing changes unless every field is valid.
    pub async fn update_settings(&self, user_id: u64, update: SettingsUpdate) -> Result<Settings> {
        tables::users::profile(&self.store, user_id)
            .await?
            .filter(|p| !p.deleted)
            .ok_or(Error::NotFound("user"))?;
        let mut s = tables::users::settings(&self.store, user_id).await?;
        if let Some(v) = update.language {
            s.language = language_tag(v)?;
        }
        if let Some(v) = update.timezone {
            s.timezone = timezone(v)?;
        }
        s.who_can_message = update.who_can_message.unwrap_or(s.who_can_message);
        s.who_can_mention = update.who_can_mention.unwrap_or(s.who_can_mention);
        s.who_can_comment = update.who_can_comment.unwrap_or(s.who_can_comment);
        s.show_read_receipts = update.show_read_receipts.unwrap_or(s.show_read_receipts);
        s.show_activity_status = update
            .show_activity_status
            .unwrap_or(s.show_activity_status);
        s.show_sensitive_media = update
            .show_sensitive_media
            .unwrap_or(s.show_sensitive_media);
        s.email_notifications = update.email_notifications.unwrap_or(s.email_notifications);
        let bytes = encode("settings", &s)?;
        self.store
            .put(&SETTINGS, &key(user_id), &[], &bytes, None)
            .await?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_must_be_plain_web_addresses() {
        let l = |url: &str| {
            link(Link {
                title: "site".into(),
                url: url.into(),
            })
        };
        assert!(l("https://example.com/me").is_ok());
        assert!(l("http://example.com").is_ok());
        for bad in [
            "javascript:alert(1)",
            "data:text/html,hi",
            "ftp://example.com",
            "https://user:pw@example.com",
            "/relative",
            "https://",
        ] {
            assert!(l(bad).is_err(), "{bad}");
        }
        assert!(l(&format!("https://example.com/{}", "a".repeat(600))).is_err());
    }

    #[test]
    fn language_and_timezone_shapes() {
        for ok in ["", "en", "pt-BR", "zh-Hant-TW", "sr-Latn"] {
            assert!(language_tag(ok.into()).is_ok(), "{ok}");
        }
        for bad in ["e", "english", "en_US", "en--US", "en-<script>"] {
            assert!(language_tag(bad.into()).is_err(), "{bad}");
        }
        for ok in [
            "",
            "UTC",
            "Europe/Lisbon",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+5",
        ] {
            assert!(timezone(ok.into()).is_ok(), "{ok}");
        }
        for bad in ["../etc/passwd", "/UTC", "Europe//Lisbon", "Europe/Lis bon"] {
            assert!(timezone(bad.into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_fields_refuse_control_characters() {
        assert!(text("a\nb".into(), 10, true, "bio").is_ok());
        assert!(text("a\nb".into(), 10, false, "location").is_err());
        assert!(text("a\u{202e}b".into(), 10, false, "x").is_ok());
        assert!(text("a\u{0}b".into(), 10, true, "bio").is_err());
        assert!(text("é".repeat(11), 10, true, "bio").is_err());
    }
}
