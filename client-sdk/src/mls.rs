//! End-to-end encryption of chat with MLS (RFC 9420, `openmls`): the device does all the
//! cryptography; the server only stores key packages, orders commits and relays opaque
//! messages (see the server's `chat::mls` module).
//!
//! An [`MlsDevice`] holds one device's signature key, its key packages' private parts
//! and its groups (ciphersuite `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`, ratchet
//! tree carried in Welcomes). A member's MLS identity is their user id (8 bytes,
//! big-endian), so members are added and removed by user id.
//!
//! The flow of a change: make it ([`MlsDevice::add`], [`MlsDevice::remove`],
//! [`MlsDevice::update`]) — a pending commit made in the group's current epoch; send it
//! ([`ChatApi::mls_commit`]; resending the same commit after a lost answer is answered
//! with the first acceptance); when the server accepts it, [`MlsDevice::confirm`]; when
//! it refuses it (`Conflict`: another commit took the epoch), first
//! [`MlsDevice::receive`] the log's new entries — the device's own commit may be among
//! them (accepted while the answer was lost), and receiving it applies the pending
//! commit — and [`MlsDevice::discard`] only if the group is still in the epoch the
//! commit was made in; then try again. Every member receives commits and application
//! messages in the conversation's log order. A device that crashed before `confirm`
//! finds its own commit in the log the same way.
//!
//! **Framing.** Application messages are always `PrivateMessage`s. Commits and
//! proposals travel as `PublicMessage`s (signed, with a membership tag, not encrypted):
//! that is what lets a device recognise its own commit from the log (RFC 9420 gives an
//! author no way to decrypt its own `PrivateMessage`). The server then sees what a
//! handshake carries besides membership, which it knows anyway: the sender's leaf
//! index, the proposals (including group-context extensions), the update path's public
//! keys and the authenticated data, never a message's content or a key's private part.
//! Welcomes stay encrypted to their recipients.
//!
//! **Key packages.** [`MlsDevice::key_packages`] makes ordinary ones (each opens one
//! Welcome, then its private part is deleted); [`MlsDevice::last_resort_package`] makes
//! the device's last-resort one (RFC 9420, 16.8), which the server hands out only when
//! the device has no other and which opens any number of Welcomes.
//!
//! **Durable state.** [`MlsDevice::open`] keeps the device's MLS state on disk (fjall,
//! written and `fsync`ed before every operation that changed it returns): the signature
//! key, the private parts of its key packages, its groups with their ratchets and any
//! pending commit. A device that restarts carries on in its groups — and never reuses a
//! ratchet generation, which would reuse a nonce. [`MlsDevice::new`] keeps it all in
//! memory (tests, short-lived tools).

use std::collections::HashMap;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use selfie_protocol::chat::{self as pc, ChatOpT};

use crate::ClientError;
use crate::chat::ChatApi;

/// Handshake messages as `PublicMessage`s, application messages always encrypted (see
/// the module docs); either framing accepted.
const HANDSHAKES_IN_THE_CLEAR: WireFormatPolicy = MIXED_PLAINTEXT_WIRE_FORMAT_POLICY;

/// How this device takes part in a group it joined (or reloads).
fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(HANDSHAKES_IN_THE_CLEAR)
        .build()
}

/// The ciphersuite every group uses.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

fn mls_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(format!("mls: {e}"))
}

/// A change waiting for the server's acceptance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The epoch it was made in (what the server checks).
    pub epoch: u64,
    /// The commit.
    pub commit: Vec<u8>,
    /// The Welcome for added members (empty when none were added).
    pub welcome: Vec<u8>,
}

/// What [`MlsDevice::receive`] made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// An application message's plaintext.
    Message(Vec<u8>),
    /// A commit, applied: the group is in a new epoch.
    Commit,
    /// A commit that removed this device: the group is gone.
    Removed,
    /// From an epoch before this device joined (or its own commit, already applied).
    Earlier,
}

/// One device's MLS state (see the module docs).
pub struct MlsDevice {
    user_id: u64,
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    groups: HashMap<Vec<u8>, MlsGroup>,
    disk: Option<Disk>,
}

/// Where a durable device keeps its state.
struct Disk {
    db: Database,
    /// openmls' storage, key for key.
    state: Keyspace,
    /// Group ids of the groups the device is in.
    groups: Keyspace,
    /// `user` (8 bytes), `signer` (the signature public key).
    meta: Keyspace,
}

fn disk_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(format!("mls state on disk: {e}"))
}

fn credential_of(user_id: u64, signer: &SignatureKeyPair) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(user_id.to_be_bytes().to_vec()).into(),
        signature_key: signer.to_public_vec().into(),
    }
}

impl MlsDevice {
    /// A device of user `user_id`, with a fresh signature key, in memory only.
    pub fn new(user_id: u64) -> Result<Self, ClientError> {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).map_err(mls_err)?;
        signer.store(provider.storage()).map_err(mls_err)?;
        Ok(Self {
            provider,
            user_id,
            credential: credential_of(user_id, &signer),
            signer,
            groups: HashMap::new(),
            disk: None,
        })
    }

    /// The device of user `user_id` whose state is kept under `dir`: as it was left
    /// (its signature key, key packages and groups), or a fresh one the first time.
    /// A directory made for another user is refused.
    pub fn open(dir: impl AsRef<Path>, user_id: u64) -> Result<Self, ClientError> {
        let db = Database::builder(dir.as_ref()).open().map_err(disk_err)?;
        let ks = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(disk_err)
        };
        let disk = Disk {
            state: ks("mls_state")?,
            groups: ks("mls_groups")?,
            meta: ks("mls_meta")?,
            db,
        };
        let provider = OpenMlsRustCrypto::default();
        let stored_user = disk.meta.get("user").map_err(disk_err)?;
        let public = disk.meta.get("signer").map_err(disk_err)?;
        let (signer, groups) = match (stored_user, public) {
            (Some(user), Some(public)) => {
                if user[..] != user_id.to_be_bytes() {
                    return Err(disk_err("this directory holds another user's device"));
                }
                {
                    let mut values = provider
                        .storage()
                        .values
                        .write()
                        .map_err(|_| disk_err("storage lock"))?;
                    for kv in disk.state.iter() {
                        let (k, v) = kv.into_inner().map_err(disk_err)?;
                        values.insert(k.to_vec(), v.to_vec());
                    }
                }
                let signer = SignatureKeyPair::read(
                    provider.storage(),
                    &public,
                    CIPHERSUITE.signature_algorithm(),
                )
                .ok_or_else(|| disk_err("the signature key is missing"))?;
                let mut groups = HashMap::new();
                for kv in disk.groups.iter() {
                    let id = kv.key().map_err(disk_err)?.to_vec();
                    let mut group = MlsGroup::load(provider.storage(), &GroupId::from_slice(&id))
                        .map_err(disk_err)?
                        .ok_or_else(|| disk_err("a group's state is missing"))?;
                    // Groups stored by an older build keep the framing it chose: every
                    // member must frame commits alike (see the module docs).
                    group
                        .set_configuration(provider.storage(), &join_config())
                        .map_err(disk_err)?;
                    groups.insert(id, group);
                }
                (signer, groups)
            }
            _ => {
                let signer =
                    SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).map_err(mls_err)?;
                signer.store(provider.storage()).map_err(mls_err)?;
                (signer, HashMap::new())
            }
        };
        let device = Self {
            provider,
            user_id,
            credential: credential_of(user_id, &signer),
            signer,
            groups,
            disk: Some(disk),
        };
        device.save()?;
        Ok(device)
    }

    /// Writes the state to disk (a durable device), `fsync`ed, before returning.
    fn save(&self) -> Result<(), ClientError> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        let values = self
            .provider
            .storage()
            .values
            .read()
            .map_err(|_| disk_err("storage lock"))?;
        let mut batch = disk.db.batch();
        // Whose device this is, in the same batch as its keys: a crash never leaves keys
        // without an owner, or an owner without keys.
        batch.insert(&disk.meta, "user", self.user_id.to_be_bytes());
        batch.insert(&disk.meta, "signer", self.signer.public());
        for kv in disk.state.iter() {
            let k = kv.key().map_err(disk_err)?;
            if !values.contains_key(&k[..]) {
                batch.remove(&disk.state, k);
            }
        }
        for (k, v) in values.iter() {
            batch.insert(&disk.state, k.as_slice(), v.as_slice());
        }
        for kv in disk.groups.iter() {
            let k = kv.key().map_err(disk_err)?;
            if !self.groups.contains_key(&k[..]) {
                batch.remove(&disk.groups, k);
            }
        }
        for id in self.groups.keys() {
            batch.insert(&disk.groups, id.as_slice(), []);
        }
        batch.commit().map_err(disk_err)?;
        disk.db.persist(PersistMode::SyncAll).map_err(disk_err)
    }

    /// `n` fresh key packages (their private parts stay on the device until one is
    /// used to join).
    pub fn key_packages(&self, n: usize) -> Result<Vec<Vec<u8>>, ClientError> {
        self.make_packages(n, false)
    }

    /// A last-resort key package (RFC 9420, 16.8): the server hands it out only when
    /// this device has no other left, and its private part stays after a join, so it
    /// can open every Welcome made with it. Upload one per device, and a new one now
    /// and then (it weakens forward secrecy while in use).
    pub fn last_resort_package(&self) -> Result<Vec<u8>, ClientError> {
        let mut one = self.make_packages(1, true)?;
        one.pop().ok_or_else(|| mls_err("no package made"))
    }

    fn make_packages(&self, n: usize, last_resort: bool) -> Result<Vec<Vec<u8>>, ClientError> {
        let packages = (0..n)
            .map(|_| {
                let mut builder = KeyPackage::builder();
                if last_resort {
                    // The leaf must say it understands the extension it carries.
                    let capabilities = Capabilities::builder()
                        .extensions(vec![ExtensionType::LastResort])
                        .build();
                    builder = builder
                        .mark_as_last_resort()
                        .leaf_node_capabilities(capabilities);
                }
                let bundle = builder
                    .build(
                        CIPHERSUITE,
                        &self.provider,
                        &self.signer,
                        self.credential.clone(),
                    )
                    .map_err(mls_err)?;
                bundle
                    .key_package()
                    .tls_serialize_detached()
                    .map_err(mls_err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.save()?; // their private parts, needed to join from a Welcome
        Ok(packages)
    }

    /// Starts group `id` with this device alone, in epoch 0.
    pub fn create_group(&mut self, id: &[u8]) -> Result<(), ClientError> {
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .wire_format_policy(HANDSHAKES_IN_THE_CLEAR)
            .build();
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &config,
            GroupId::from_slice(id),
            self.credential.clone(),
        )
        .map_err(mls_err)?;
        self.groups.insert(id.to_vec(), group);
        self.save()
    }

    /// The group's epoch (`None`: not a member).
    pub fn epoch(&self, id: &[u8]) -> Option<u64> {
        self.groups.get(id).map(|g| g.epoch().as_u64())
    }

    /// The user ids of the group's members.
    pub fn members(&self, id: &[u8]) -> Vec<u64> {
        self.groups
            .get(id)
            .map(|g| {
                g.members()
                    .filter_map(|m| {
                        <[u8; 8]>::try_from(m.credential.serialized_content())
                            .ok()
                            .map(u64::from_be_bytes)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Adds the owners of `key_packages`: (the user the server says it belongs to, the
    /// package), as claimed. Each package must be valid and its credential must name
    /// that very user: a server (or a user) handing out someone else's package under
    /// another name is refused, never added.
    pub fn add(
        &mut self,
        id: &[u8],
        key_packages: &[(u64, Vec<u8>)],
    ) -> Result<Pending, ClientError> {
        let packages = key_packages
            .iter()
            .map(|(user, b)| {
                let package = KeyPackageIn::tls_deserialize_exact(b.as_slice())
                    .map_err(mls_err)?
                    .validate(self.provider.crypto(), ProtocolVersion::Mls10)
                    .map_err(mls_err)?;
                let identity = package.leaf_node().credential().serialized_content();
                if identity != user.to_be_bytes() {
                    return Err(mls_err(format!(
                        "a key package claimed for user {user} names someone else"
                    )));
                }
                Ok(package)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (provider, signer) = (&self.provider, &self.signer);
        let group = self
            .groups
            .get_mut(id)
            .ok_or_else(|| mls_err("no such group on this device"))?;
        let epoch = group.epoch().as_u64();
        let (commit, welcome, _) = group
            .add_members(provider, signer, &packages)
            .map_err(mls_err)?;
        let pending = Pending {
            epoch,
            commit: commit.to_bytes().map_err(mls_err)?,
            welcome: welcome.to_bytes().map_err(mls_err)?,
        };
        self.save()?;
        Ok(pending)
    }

    /// Removes `users` from the group.
    pub fn remove(&mut self, id: &[u8], users: &[u64]) -> Result<Pending, ClientError> {
        let (provider, signer) = (&self.provider, &self.signer);
        let group = self
            .groups
            .get_mut(id)
            .ok_or_else(|| mls_err("no such group on this device"))?;
        let leaves: Vec<LeafNodeIndex> = group
            .members()
            .filter(|m| {
                users
                    .iter()
                    .any(|u| m.credential.serialized_content() == u.to_be_bytes())
            })
            .map(|m| m.index)
            .collect();
        let epoch = group.epoch().as_u64();
        let (commit, _, _) = group
            .remove_members(provider, signer, &leaves)
            .map_err(mls_err)?;
        let pending = Pending {
            epoch,
            commit: commit.to_bytes().map_err(mls_err)?,
            welcome: Vec::new(),
        };
        self.save()?;
        Ok(pending)
    }

    /// Rotates this device's keys in the group (a self-update commit).
    pub fn update(&mut self, id: &[u8]) -> Result<Pending, ClientError> {
        let (provider, signer) = (&self.provider, &self.signer);
        let group = self
            .groups
            .get_mut(id)
            .ok_or_else(|| mls_err("no such group on this device"))?;
        let epoch = group.epoch().as_u64();
        let bundle = group
            .self_update(
                provider,
                signer,
                openmls::treesync::LeafNodeParameters::default(),
            )
            .map_err(mls_err)?;
        let (commit, _, _) = bundle.into_contents();
        let pending = Pending {
            epoch,
            commit: commit.to_bytes().map_err(mls_err)?,
            welcome: Vec::new(),
        };
        self.save()?;
        Ok(pending)
    }

    /// The server accepted this device's pending commit: apply it.
    pub fn confirm(&mut self, id: &[u8]) -> Result<(), ClientError> {
        let provider = &self.provider;
        let group = self
            .groups
            .get_mut(id)
            .ok_or_else(|| mls_err("no such group on this device"))?;
        group.merge_pending_commit(provider).map_err(mls_err)?;
        self.save()
    }

    /// The server refused this device's pending commit: drop it.
    pub fn discard(&mut self, id: &[u8]) -> Result<(), ClientError> {
        let provider = &self.provider;
        let group = self
            .groups
            .get_mut(id)
            .ok_or_else(|| mls_err("no such group on this device"))?;
        group
            .clear_pending_commit(provider.storage())
            .map_err(mls_err)?;
        self.save()
    }

    /// Joins from a Welcome; returns the group id.
    pub fn join(&mut self, welcome: &[u8]) -> Result<Vec<u8>, ClientError> {
        let message = MlsMessageIn::tls_deserialize_exact(welcome).map_err(mls_err)?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(mls_err("not a Welcome"));
        };
        let config = join_config();
        let group = StagedWelcome::new_from_welcome(&self.provider, &config, welcome, None)
            .map_err(mls_err)?
            .into_group(&self.provider)
            .map_err(mls_err)?;
        let id = group.group_id().as_slice().to_vec();
        self.groups.insert(id.clone(), group);
        self.save()?;
        Ok(id)
    }

    /// Encrypts `plaintext` for the group: (the epoch, the MLS message).
    pub fn encrypt(&mut self, id: &[u8], plaintext: &[u8]) -> Result<(u64, Vec<u8>), ClientError> {
        let (provider, signer) = (&self.provider, &self.signer);
        let group = self
            .groups
            .get_mut(id)
            .ok_or_else(|| mls_err("no such group on this device"))?;
        let epoch = group.epoch().as_u64();
        let message = group
            .create_message(provider, signer, plaintext)
            .map_err(mls_err)?;
        let bytes = message.to_bytes().map_err(mls_err)?;
        // The ratchet moved on: on disk before the ciphertext leaves the device, so a
        // restart never encrypts with the same generation (and nonce) again.
        self.save()?;
        Ok((epoch, bytes))
    }

    /// Processes a commit or application message of the group made in `epoch`.
    pub fn receive(
        &mut self,
        id: &[u8],
        epoch: u64,
        bytes: &[u8],
    ) -> Result<Received, ClientError> {
        let received = self.process(id, epoch, bytes);
        self.save()?;
        received
    }

    fn process(&mut self, id: &[u8], epoch: u64, bytes: &[u8]) -> Result<Received, ClientError> {
        let provider = &self.provider;
        let group = match self.groups.get_mut(id) {
            Some(g) => g,
            None => return Err(mls_err("no such group on this device")),
        };
        if epoch < group.epoch().as_u64() {
            return Ok(Received::Earlier);
        }
        let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(mls_err)?;
        let message = message.try_into_protocol_message().map_err(mls_err)?;
        let processed = group.process_message(provider, message).map_err(mls_err)?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(m) => Ok(Received::Message(m.into_bytes())),
            ProcessedMessageContent::StagedCommitMessage(commit) => {
                let removed = commit.self_removed();
                group
                    .merge_staged_commit(provider, *commit)
                    .map_err(mls_err)?;
                if removed {
                    self.groups.remove(id);
                    return Ok(Received::Removed);
                }
                Ok(Received::Commit)
            }
            // This device's own commit, accepted by the server while its answer was
            // lost (a crash or a dropped connection before `confirm`): apply it now.
            ProcessedMessageContent::OwnPendingCommit => {
                group.merge_pending_commit(provider).map_err(mls_err)?;
                Ok(Received::Commit)
            }
            _ => Ok(Received::Earlier),
        }
    }
}

impl ChatApi<'_> {
    /// Uploads key packages of this user's device `device_id`, and its last-resort
    /// package ([`MlsDevice::last_resort_package`]; it replaces the one the server had).
    pub async fn upload_key_packages(
        &self,
        device_id: &str,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let mut r = pc::MlsKeyPackagesUploadRequestT::default();
        r.device_id = Some(device_id.to_string());
        let entry = |p: Vec<u8>, last_resort: bool| {
            let mut k = pc::MlsKeyPackageT::default();
            k.device_id = Some(device_id.to_string());
            k.key_package = Some(p);
            k.last_resort = last_resort;
            k
        };
        r.packages = Some(
            packages
                .into_iter()
                .map(|p| entry(p, false))
                .chain(last_resort.map(|p| entry(p, true)))
                .collect(),
        );
        self.call(ChatOpT::MlsKeyPackagesUploadRequest(Box::new(r)))
            .await
            .map(|_| ())
    }

    /// Claims one key package of each device of each of `users` (each handed out once):
    /// the packages, and the users the answer had no room for (claim them again).
    pub async fn claim_key_packages(
        &self,
        users: &[u64],
    ) -> Result<(Vec<pc::MlsKeyPackageT>, Vec<u64>), ClientError> {
        let mut r = pc::MlsKeyPackagesClaimRequestT::default();
        r.user_ids = Some(users.to_vec());
        match self
            .call(ChatOpT::MlsKeyPackagesClaimRequest(Box::new(r)))
            .await?
        {
            ChatOpT::MlsKeyPackagesClaimResponse(c) => Ok((
                c.packages.unwrap_or_default(),
                c.left_out.unwrap_or_default(),
            )),
            _ => Err(ClientError::Protocol(
                "expected MlsKeyPackagesClaimResponse".into(),
            )),
        }
    }

    /// Makes an encrypted group with `members` for MLS group `group_id`.
    pub async fn encrypted_group(
        &self,
        members: &[u64],
        group_id: &[u8],
        key: &str,
    ) -> Result<pc::ConversationT, ClientError> {
        let mut r = pc::CreateConversationRequestT::default();
        r.kind = pc::ConversationKind::Group;
        r.member_ids = Some(members.to_vec());
        r.encrypted = true;
        r.mls_group_id = Some(group_id.to_vec());
        r.idempotency_key = Some(key.to_string());
        match self
            .call(ChatOpT::CreateConversationRequest(Box::new(r)))
            .await?
        {
            ChatOpT::ConversationResponse(c) => c
                .conversation
                .map(|c| *c)
                .ok_or_else(|| ClientError::Protocol("expected a conversation".into())),
            _ => Err(ClientError::Protocol(
                "expected ConversationResponse".into(),
            )),
        }
    }

    /// Sends a commit (and its Welcome for `recipients`); `Conflict` when another commit
    /// took the epoch (see the module docs for what to do then). Sending the same commit
    /// again is answered with its first acceptance (`duplicate: true`).
    pub async fn mls_commit(
        &self,
        conversation_id: u64,
        pending: &Pending,
        recipients: &[u64],
    ) -> Result<pc::SendMessageResponseT, ClientError> {
        let mut r = pc::MlsCommitRequestT::default();
        r.conversation_id = conversation_id;
        r.epoch = pending.epoch;
        r.commit = Some(pending.commit.clone());
        if !pending.welcome.is_empty() {
            r.welcome = Some(pending.welcome.clone());
            r.welcome_recipients = Some(recipients.to_vec());
        }
        match self.call(ChatOpT::MlsCommitRequest(Box::new(r))).await? {
            ChatOpT::SendMessageResponse(s) => Ok(*s),
            _ => Err(ClientError::Protocol("expected SendMessageResponse".into())),
        }
    }

    /// Sends an encrypted application message made in `epoch`.
    pub async fn send_mls(
        &self,
        conversation_id: u64,
        client_msg_id: &str,
        epoch: u64,
        ciphertext: Vec<u8>,
    ) -> Result<pc::SendMessageResponseT, ClientError> {
        let mut r = pc::SendMessageRequestT::default();
        r.conversation_id = conversation_id;
        r.client_msg_id = Some(client_msg_id.to_string());
        r.kind = pc::MessageKind::Mls;
        let mut m = pc::MlsMessageT::default();
        m.epoch = epoch;
        m.content_type = pc::MlsContentType::Application;
        m.data = Some(ciphertext);
        r.mls = Some(Box::new(m));
        self.send_request(r).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A last-resort package opens every Welcome made with it (its private part stays),
    /// where an ordinary one opens one.
    #[test]
    fn a_last_resort_package_opens_many_welcomes() {
        let mut cat = MlsDevice::new(3).expect("cat");
        let last = cat.last_resort_package().expect("package");
        let ordinary = cat.key_packages(1).expect("package").remove(0);
        let mut welcomes = Vec::new();
        for (i, package) in [&last, &last, &ordinary, &ordinary].into_iter().enumerate() {
            let mut owner = MlsDevice::new(1).expect("ana");
            let group = format!("group-{i}").into_bytes();
            owner.create_group(&group).expect("group");
            let pending = owner.add(&group, &[(3, package.clone())]).expect("add");
            owner.confirm(&group).expect("confirm");
            welcomes.push(pending.welcome);
        }
        assert!(cat.join(&welcomes[0]).is_ok());
        assert!(cat.join(&welcomes[1]).is_ok(), "the last resort is kept");
        assert!(cat.join(&welcomes[2]).is_ok());
        assert!(
            cat.join(&welcomes[3]).is_err(),
            "an ordinary package is used up"
        );
    }

    /// Both devices restart between every step: key packages made before a restart
    /// still open the Welcome, and the groups carry on in both directions afterwards.
    #[test]
    fn a_durable_device_carries_on_after_a_restart() {
        let (ana_dir, ben_dir) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let ana = || MlsDevice::open(ana_dir.path(), 1).expect("ana");
        let ben = || MlsDevice::open(ben_dir.path(), 2).expect("ben");
        let group = b"durable".to_vec();
        let package = ben().key_packages(1).expect("package").remove(0);
        let mut a = ana();
        a.create_group(&group).expect("group");
        drop(a);
        let mut a = ana();
        let pending = a.add(&group, &[(2, package)]).expect("add");
        drop(a);
        // The pending commit survives the restart too.
        let mut a = ana();
        a.confirm(&group).expect("confirm");
        assert_eq!(a.epoch(&group), Some(1));
        let (epoch, first) = a.encrypt(&group, b"one").expect("encrypt");
        drop(a);
        let mut b = ben();
        assert_eq!(b.join(&pending.welcome).expect("join"), group);
        drop(b);
        let mut b = ben();
        assert_eq!(
            b.receive(&group, epoch, &first).expect("received"),
            Received::Message(b"one".to_vec())
        );
        drop(b);
        let mut a = ana();
        let (epoch, second) = a.encrypt(&group, b"two").expect("encrypt");
        assert_ne!(first, second);
        let mut b = ben();
        assert_eq!(
            b.receive(&group, epoch, &second).expect("received"),
            Received::Message(b"two".to_vec())
        );
        let (epoch, reply) = b.encrypt(&group, b"three").expect("encrypt");
        drop(a);
        let mut a = ana();
        assert_eq!(
            a.receive(&group, epoch, &reply).expect("received"),
            Received::Message(b"three".to_vec())
        );
        assert_eq!(a.members(&group), vec![1, 2]);
        // Ana's commit is accepted but her device stops before `confirm`: after the
        // restart her own commit, read from the log, applies the pending one.
        let update = a.update(&group).expect("update");
        drop(a);
        let mut a = ana();
        assert_eq!(
            a.receive(&group, update.epoch, &update.commit)
                .expect("own commit"),
            Received::Commit
        );
        assert_eq!(
            b.receive(&group, update.epoch, &update.commit)
                .expect("commit"),
            Received::Commit
        );
        let (epoch, after) = a.encrypt(&group, b"four").expect("encrypt");
        assert_eq!(epoch, 2);
        assert_eq!(
            b.receive(&group, epoch, &after).expect("received"),
            Received::Message(b"four".to_vec())
        );
        // A directory is one user's device.
        assert!(MlsDevice::open(ana_dir.path(), 9).is_err());
    }
}
