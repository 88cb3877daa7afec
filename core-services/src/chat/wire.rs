//! The `Chat` service on the wire. Every operation acts as the session's user. Changes to
//! a conversation run on the conversation's owner shard, where they take turns (see the
//! module docs of `crate::chat` for what holds across nodes); reads run where they
//! arrive.

use std::rc::Rc;

use bytes::Bytes;
use selfie_protocol::chat::{self as pc, ChatOp, ChatOpT};
use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::{Body, common};
use selfie_storage::{Cursor, Store};

use super::{
    Chat, Entry, EventKind, Folder, Kind, LogItem, Message, MessageKind, Mls, NewMessage, Receipt,
    Role, SyncCursor, Update, View,
};
use crate::plane::{
    Call, Delivery, Subscription, Topic, envelope, ids, make, page_request, page_t, service_table,
    user_ref, wire_enum,
};
use crate::{Error, Result};

/// The chat service of one shard, on the wire.
#[derive(Clone)]
pub struct ChatWire<S>(pub Rc<Chat<S>>);

service_table! {
    impl[S: Store + Clone + 'static] ChatWire<S>;
    body body_as_chat, ops ChatOp, answers ChatOpT in Chat(pc::ChatT),
        subscribe subscribe;
    CreateConversationRequest(op_as_create_conversation_request) => create;
    GetConversationRequest(op_as_get_conversation_request) => get;
    ConversationsListRequest(op_as_conversations_list_request) => list;
    UpdateConversationRequest(op_as_update_conversation_request) => update,
        owner |r, _me| r.conversation_id();
    AddMembersRequest(op_as_add_members_request) => add_members,
        owner |r, _me| r.conversation_id();
    RemoveMemberRequest(op_as_remove_member_request) => remove_member,
        owner |r, _me| r.conversation_id();
    SetMemberRoleRequest(op_as_set_member_role_request) => set_role,
        owner |r, _me| r.conversation_id();
    LeaveConversationRequest(op_as_leave_conversation_request) => leave,
        owner |r, _me| r.conversation_id();
    SendMessageRequest(op_as_send_message_request) => send, owner |r, _me| r.conversation_id();
    EditMessageRequest(op_as_edit_message_request) => edit, owner |r, _me| r.conversation_id();
    DeleteMessageRequest(op_as_delete_message_request) => delete,
        owner |r, _me| r.conversation_id();
    MessageReactRequest(op_as_message_react_request) => react,
        owner |r, _me| r.conversation_id();
    ReadReceiptRequest(op_as_read_receipt_request) => read, owner |r, _me| r.conversation_id();
    DeliveryReceiptRequest(op_as_delivery_receipt_request) => delivered,
        owner |r, _me| r.conversation_id();
    HistoryRequest(op_as_history_request) => history;
    SyncRequest(op_as_sync_request) => sync;
    MessageRequestAnswerRequest(op_as_message_request_answer_request) => answer_request,
        owner |r, _me| r.conversation_id();
    MessageEditsRequest(op_as_message_edits_request) => versions;
    MlsKeyPackagesUploadRequest(op_as_mls_key_packages_upload_request) => upload_key_packages;
    MlsKeyPackagesClaimRequest(op_as_mls_key_packages_claim_request) => claim_key_packages;
    MlsCommitRequest(op_as_mls_commit_request) => mls_commit, owner |r, _me| r.conversation_id();
}

wire_enum!(message_kind, wire_message_kind: MessageKind <=> WireKind, "kind"
    { Text, Media, System, Mls, StoryReply, PostShare });
wire_enum!(role, wire_role: Role <=> WireRole, "role" { Member, Admin, Owner });
use pc::MemberRole as WireRole;
use pc::MessageKind as WireKind;

/// Most messages on one history page.
const HISTORY_MAX: usize = 100;

fn message_t(conversation_id: u64, m: Message) -> pc::MessageT {
    let reactions = m.reaction_counts().into_iter().map(|(emoji, count)| {
        make!(common::ReactionCountT {
            emoji: Some(emoji),
            count,
        })
    });
    let media = m
        .media_ids
        .iter()
        .map(|&media_id| make!(common::MediaRefT { media_id }));
    let mls = m.mls.map(|x| {
        Box::new(make!(pc::MlsMessageT {
            epoch: x.epoch,
            content_type: pc::MlsContentType(x.content_type),
            data: Some(x.data),
        }))
    });
    make!(pc::MessageT {
        conversation_id,
        message_id: m.message_id,
        seq: m.seq,
        sender_id: m.sender_id,
        client_msg_id: Some(m.client_msg_id),
        kind: wire_message_kind(m.kind),
        text: Some(m.text),
        media: Some(media.collect()),
        reply_to_seq: m.reply_to_seq,
        ref_id: m.ref_id,
        created_at_ms: m.created_at_ms,
        edited_at_ms: m.edited_at_ms,
        deleted: m.deleted,
        reactions: Some(reactions.collect()),
        mls,
        thread_seq: m.thread_seq,
        forwarded: m.forwarded,
        edit_count: m.edit_count,
    })
}

/// A log entry as a `ChatEvent`.
fn event_t(item: &LogItem) -> pc::ChatEventT {
    let id = item.conversation_id;
    match &item.entry {
        Entry::Message(m) => make!(pc::ChatEventT {
            kind: pc::ChatEventKind::MessageCreated,
            conversation_id: id,
            event_seq: item.seq,
            actor_id: m.sender_id,
            message: Some(Box::new(message_t(id, m.clone()))),
            at_ms: m.created_at_ms,
        }),
        Entry::Event(e) => {
            let kind = match e.kind {
                EventKind::Created => pc::ChatEventKind::ConversationCreated,
                EventKind::Edited => pc::ChatEventKind::MessageEdited,
                EventKind::Deleted => pc::ChatEventKind::MessageDeleted,
                EventKind::Reacted => pc::ChatEventKind::ReactionAdded,
                EventKind::Unreacted => pc::ChatEventKind::ReactionRemoved,
                EventKind::Joined => pc::ChatEventKind::MemberJoined,
                EventKind::Left => pc::ChatEventKind::MemberLeft,
                EventKind::Updated => pc::ChatEventKind::ConversationUpdated,
                EventKind::RoleChanged => pc::ChatEventKind::MemberRoleChanged,
            };
            // Events about a message name it by number (and carry an edit's new text).
            let message = (e.target_seq != 0).then(|| {
                Box::new(make!(pc::MessageT {
                    conversation_id: id,
                    seq: e.target_seq,
                    text: (e.kind == EventKind::Edited).then(|| e.text.clone()),
                    edited_at_ms: if e.kind == EventKind::Edited {
                        e.at_ms
                    } else {
                        0
                    },
                    deleted: e.kind == EventKind::Deleted,
                }))
            });
            make!(pc::ChatEventT {
                kind,
                conversation_id: id,
                event_seq: item.seq,
                actor_id: e.actor,
                message,
                emoji: (!e.emoji.is_empty()).then(|| e.emoji.clone()),
                at_ms: e.at_ms,
                user_id: e.user,
                text: (e.kind != EventKind::Edited && !e.text.is_empty()).then(|| e.text.clone()),
            })
        }
    }
}

fn push_frame(delivery: &Delivery, event: pc::ChatEventT) -> Result<Bytes> {
    delivery.encode_event(|b, placeholder| {
        let t = make!(pc::ChatT {
            op: ChatOpT::ChatEvent(Box::new(event)),
        })
        .pack(b);
        envelope(b, placeholder, Body::Chat, t.as_union_value())
    })
}

/// The push frame of a log entry.
pub(super) fn event_frame(delivery: &Delivery, item: &LogItem) -> Result<Bytes> {
    push_frame(delivery, event_t(item))
}

/// The frame of a typing signal (a datagram on its way).
pub(super) fn typing_frame(
    delivery: &Delivery,
    conversation_id: u64,
    user: u64,
    typing: bool,
    at_ms: u64,
) -> Result<Bytes> {
    push_frame(
        delivery,
        make!(pc::ChatEventT {
            kind: pc::ChatEventKind::Typing,
            conversation_id,
            actor_id: user,
            typing,
            at_ms,
        }),
    )
}

/// The frame of a presence change (a datagram on its way).
pub(super) fn presence_frame(
    delivery: &Delivery,
    user: u64,
    status: u8,
    last_active_ms: u64,
) -> Result<Bytes> {
    push_frame(
        delivery,
        make!(pc::ChatEventT {
            kind: pc::ChatEventKind::Presence,
            actor_id: user,
            presence: selfie_protocol::datagram::PresenceStatus(status),
            last_active_ms,
            at_ms: last_active_ms,
        }),
    )
}

/// The push frame of a receipt (not a log entry: `event_seq` 0).
pub(super) fn receipt_frame(
    delivery: &Delivery,
    conversation_id: u64,
    member: u64,
    kind: Receipt,
    up_to_seq: u64,
    at_ms: u64,
) -> Result<Bytes> {
    let kind = match kind {
        Receipt::Read => pc::ChatEventKind::ReadUpTo,
        Receipt::Delivered => pc::ChatEventKind::DeliveredUpTo,
    };
    push_frame(
        delivery,
        make!(pc::ChatEventT {
            kind,
            conversation_id,
            actor_id: member,
            up_to_seq,
            at_ms,
        }),
    )
}

fn conversation_t(v: View) -> pc::ConversationT {
    let id = v.conversation_id;
    let members = v.members.iter().map(|(user, m)| {
        let p = v.presence.get(user);
        make!(pc::ChatMemberT {
            user: user_ref(*user),
            role: wire_role(m.role),
            joined_at_ms: m.joined_at_ms,
            last_read_seq: m.last_read_seq,
            last_delivered_seq: m.last_delivered_seq,
            presence: selfie_protocol::datagram::PresenceStatus(p.map_or(0, |p| p.status)),
            last_active_ms: p.map_or(0, |p| p.last_active_ms),
        })
    });
    make!(pc::ConversationT {
        conversation_id: id,
        kind: match v.rec.kind {
            Kind::Direct => pc::ConversationKind::Direct,
            Kind::Group => pc::ConversationKind::Group,
        },
        title: Some(v.rec.title),
        avatar_media_id: v.rec.avatar_media_id,
        members_count: v.members.len() as u32,
        members: Some(members.collect()),
        created_at_ms: v.rec.created_at_ms,
        last_seq: v.head.last_seq,
        last_read_seq: v.me.last_read_seq,
        unread_count: v.unread,
        muted_until_ms: v.mine.muted_until_ms,
        encrypted: v.rec.encrypted,
        mls_group_id: Some(v.rec.mls_group_id),
        last_message: v.last_message.map(|m| Box::new(message_t(id, m))),
        request: v.me.state == super::MemberState::Request,
        archived: v.mine.archived,
        pinned: v.mine.pinned,
    })
}

/// A list position: (last activity, conversation id), 16 bytes.
fn list_position(c: Option<Cursor>) -> Result<Option<(u64, u64)>> {
    let Some(c) = c else { return Ok(None) };
    let b: [u8; 16] = c.0[..]
        .try_into()
        .map_err(|_| Error::InvalidArgument { field: "cursor" })?;
    let (a, i) = b.split_at(8);
    let n = |x: &[u8]| x.try_into().map(u64::from_be_bytes).unwrap_or(0);
    Ok(Some((n(a), n(i))))
}

/// A change to a conversation, answered `Ack`.
macro_rules! changes {
    ($($name:ident($Request:ident) |$chat:ident, $me:ident, $r:ident| $body:expr;)*) => {$(
        async fn $name(self, call: &Call, $r: pc::$Request<'_>) -> Result<Bytes> {
            let $me = call.user()?;
            let $chat = &self.0;
            $body.await?;
            call.ack()
        }
    )*};
}

impl<S: Store + Clone + 'static> ChatWire<S> {
    fn conversation(call: &Call, view: View) -> Result<Bytes> {
        let conversation = Some(Box::new(conversation_t(view)));
        Self::answer(
            call,
            ChatOpT::ConversationResponse(Box::new(make!(pc::ConversationResponseT {
                conversation
            }))),
        )
    }

    changes! {
        add_members(AddMembersRequest) |chat, me, r| chat.add_members(
            me, r.conversation_id(), &ids(r.user_ids(), super::MAX_MEMBERS));
        remove_member(RemoveMemberRequest) |chat, me, r|
            chat.remove_member(me, r.conversation_id(), r.user_id());
        leave(LeaveConversationRequest) |chat, me, r|
            chat.remove_member(me, r.conversation_id(), me);
        delete(DeleteMessageRequest) |chat, me, r| async {
            if !r.for_everyone() {
                return Err(Error::Unavailable("deleting a message for yourself only"));
            }
            chat.delete(me, r.conversation_id(), r.seq()).await
        };
        react(MessageReactRequest) |chat, me, r| chat.react(
            me, r.conversation_id(), r.seq(),
            if r.remove() { None } else { Some(r.emoji().unwrap_or_default()) });
        read(ReadReceiptRequest) |chat, me, r|
            chat.receipt(me, r.conversation_id(), Receipt::Read, r.up_to_seq());
        delivered(DeliveryReceiptRequest) |chat, me, r|
            chat.receipt(me, r.conversation_id(), Receipt::Delivered, r.up_to_seq());
        answer_request(MessageRequestAnswerRequest) |chat, me, r|
            chat.answer_request(me, r.conversation_id(), r.accept());
    }

    async fn set_role(self, call: &Call, r: pc::SetMemberRoleRequest<'_>) -> Result<Bytes> {
        let role = role(r.role())?;
        self.0
            .set_role(call.user()?, r.conversation_id(), r.user_id(), role)
            .await?;
        call.ack()
    }

    async fn create(self, call: &Call, r: pc::CreateConversationRequest<'_>) -> Result<Bytes> {
        let me = call.user()?;
        let members = ids(r.member_ids(), super::MAX_MEMBERS);
        let id = match r.kind() {
            pc::ConversationKind::Direct => {
                if r.encrypted() {
                    return Err(Error::Unavailable("encrypted direct conversations"));
                }
                let [other] = members[..] else {
                    return Err(Error::InvalidArgument {
                        field: "member_ids",
                    });
                };
                self.0.direct(me, other).await?
            }
            pc::ConversationKind::Group => {
                let title = r.title().unwrap_or_default();
                let group_id = r.mls_group_id().map(|v| v.bytes().to_vec());
                self.0
                    .group(
                        me,
                        &members,
                        title,
                        r.encrypted(),
                        group_id.unwrap_or_default(),
                        r.idempotency_key(),
                    )
                    .await?
            }
            _ => return Err(Error::InvalidArgument { field: "kind" }),
        };
        // Charged as any view: starting an existing conversation again costs no Create.
        let view = self.0.view(me, id).await?;
        Self::conversation(call, view)
    }

    async fn get(self, call: &Call, r: pc::GetConversationRequest<'_>) -> Result<Bytes> {
        let view = self.0.view(call.user()?, r.conversation_id()).await?;
        Self::conversation(call, view)
    }

    async fn list(self, call: &Call, r: pc::ConversationsListRequest<'_>) -> Result<Bytes> {
        let (limit, cursor) = page_request(r.page());
        let folder = match r.folder() {
            pc::ConversationFolder::Inbox => Folder::Inbox,
            pc::ConversationFolder::Requests => Folder::Requests,
            pc::ConversationFolder::Archived => Folder::Archived,
            _ => return Err(Error::InvalidArgument { field: "folder" }),
        };
        let after = list_position(cursor)?;
        let (views, next) = self.0.list(call.user()?, folder, limit, after).await?;
        let next = next.map(|(a, i)| {
            let mut b = Vec::with_capacity(16);
            b.extend_from_slice(&a.to_be_bytes());
            b.extend_from_slice(&i.to_be_bytes());
            Cursor(Bytes::from(b))
        });
        let list = make!(pc::ConversationsListResponseT {
            conversations: Some(views.into_iter().map(conversation_t).collect()),
            page: page_t(next),
        });
        Self::answer(call, ChatOpT::ConversationsListResponse(Box::new(list)))
    }

    async fn update(self, call: &Call, r: pc::UpdateConversationRequest<'_>) -> Result<Bytes> {
        let u = Update {
            title: r.title().map(str::to_string),
            avatar_media_id: r.avatar_media_id(),
            muted_until_ms: r.muted_until_ms(),
            archived: r.archived(),
            pinned: r.pinned(),
        };
        self.0.update(call.user()?, r.conversation_id(), u).await?;
        call.ack()
    }

    async fn send(self, call: &Call, r: pc::SendMessageRequest<'_>) -> Result<Bytes> {
        let forward = (r.forward_conversation_id() != 0)
            .then(|| (r.forward_conversation_id(), r.forward_seq()));
        let mls = r.mls().map(|m| Mls {
            epoch: m.epoch(),
            content_type: m.content_type().0,
            data: m.data().map(|d| d.bytes().to_vec()).unwrap_or_default(),
            recipients: Vec::new(),
        });
        if mls
            .as_ref()
            .is_some_and(|m| m.data.len() > super::MAX_MLS_BYTES)
        {
            return Err(Error::InvalidArgument { field: "mls" });
        }
        let new = NewMessage {
            client_msg_id: r.client_msg_id().unwrap_or_default().to_string(),
            kind: message_kind(r.kind())?,
            text: r.text().unwrap_or_default().to_string(),
            media_ids: ids(r.media_ids(), super::MAX_ATTACHMENTS),
            reply_to_seq: r.reply_to_seq(),
            ref_id: r.ref_id(),
            thread_seq: r.thread_seq(),
            forward,
            mls,
        };
        let sent = self.0.send(call.user()?, r.conversation_id(), new).await?;
        let answer = make!(pc::SendMessageResponseT {
            message_id: sent.message_id,
            seq: sent.seq,
            created_at_ms: sent.created_at_ms,
            duplicate: sent.duplicate,
        });
        Self::answer(call, ChatOpT::SendMessageResponse(Box::new(answer)))
    }

    async fn edit(self, call: &Call, r: pc::EditMessageRequest<'_>) -> Result<Bytes> {
        if r.mls().is_some() {
            return Err(Error::Unavailable("editing encrypted messages"));
        }
        let text = r.text().unwrap_or_default();
        self.0
            .edit(call.user()?, r.conversation_id(), r.seq(), text)
            .await?;
        call.ack()
    }

    async fn history(self, call: &Call, r: pc::HistoryRequest<'_>) -> Result<Bytes> {
        let limit = usize::from(r.limit()).clamp(1, HISTORY_MAX);
        let id = r.conversation_id();
        let (messages, next) = self
            .0
            .history(call.user()?, id, r.before_seq(), limit)
            .await?;
        let page = make!(pc::MessagesPageT {
            conversation_id: id,
            messages: Some(messages.into_iter().map(|m| message_t(id, m)).collect()),
            has_more: next.is_some(),
            next_before_seq: next.unwrap_or(0),
        });
        Self::answer(call, ChatOpT::MessagesPage(Box::new(page)))
    }

    async fn sync(self, call: &Call, r: pc::SyncRequest<'_>) -> Result<Bytes> {
        let cursor = SyncCursor::from_bytes(r.since_cursor().map(|c| c.bytes()).unwrap_or(&[]))?;
        let only = (r.conversation_id() != 0).then_some(r.conversation_id());
        let limit = if r.limit() == 0 {
            500
        } else {
            usize::from(r.limit())
        };
        let synced = self.0.sync(call.user()?, &cursor, only, limit).await?;
        let answer = make!(pc::SyncResponseT {
            events: Some(synced.items.iter().map(event_t).collect()),
            next_cursor: Some(synced.cursor.to_bytes()),
            has_more: synced.has_more,
            limited: Some(synced.limited),
        });
        Self::answer(call, ChatOpT::SyncResponse(Box::new(answer)))
    }

    async fn upload_key_packages(
        self,
        call: &Call,
        r: pc::MlsKeyPackagesUploadRequest<'_>,
    ) -> Result<Bytes> {
        let mut packages = Vec::new();
        let mut last_resort = None;
        // One more than allowed is enough to refuse an oversize upload.
        for p in r.packages().iter().flatten().take(102) {
            let bytes = p
                .key_package()
                .map(|b| b.bytes().to_vec())
                .unwrap_or_default();
            if !p.last_resort() {
                packages.push(bytes);
            } else if last_resort.replace(bytes).is_some() {
                return Err(Error::InvalidArgument {
                    field: "last_resort",
                });
            }
        }
        let device = r.device_id().unwrap_or_default();
        self.0
            .upload_key_packages(call.user()?, device, &packages, last_resort.as_deref())
            .await?;
        call.ack()
    }

    async fn claim_key_packages(
        self,
        call: &Call,
        r: pc::MlsKeyPackagesClaimRequest<'_>,
    ) -> Result<Bytes> {
        let users = ids(r.user_ids(), 50);
        let (claimed, left_out) = self
            .0
            .claim_key_packages_within(call.user()?, &users)
            .await?;
        let packages = claimed.into_iter().map(|p| {
            make!(pc::MlsKeyPackageT {
                user_id: p.user_id,
                device_id: Some(p.device_id),
                key_package: Some(p.key_package),
            })
        });
        let answer = make!(pc::MlsKeyPackagesClaimResponseT {
            packages: Some(packages.collect()),
            left_out: Some(left_out),
        });
        Self::answer(call, ChatOpT::MlsKeyPackagesClaimResponse(Box::new(answer)))
    }

    async fn mls_commit(self, call: &Call, r: pc::MlsCommitRequest<'_>) -> Result<Bytes> {
        let bytes = |v: Option<flatbuffers::Vector<'_, u8>>| {
            v.map(|v| v.bytes().to_vec()).unwrap_or_default()
        };
        let sent = self
            .0
            .mls_commit(
                call.user()?,
                r.conversation_id(),
                r.epoch(),
                bytes(r.commit()),
                bytes(r.welcome()),
                ids(r.welcome_recipients(), super::MAX_MEMBERS),
            )
            .await?;
        let answer = make!(pc::SendMessageResponseT {
            message_id: sent.message_id,
            seq: sent.seq,
            created_at_ms: sent.created_at_ms,
            duplicate: false,
        });
        Self::answer(call, ChatOpT::SendMessageResponse(Box::new(answer)))
    }

    async fn versions(self, call: &Call, r: pc::MessageEditsRequest<'_>) -> Result<Bytes> {
        let versions = self
            .0
            .versions(call.user()?, r.conversation_id(), r.seq())
            .await?;
        let versions = versions.into_iter().map(|v| {
            make!(pc::MessageVersionT {
                text: Some(v.text),
                replaced_at_ms: v.replaced_at_ms,
            })
        });
        let answer = make!(pc::MessageEditsResponseT {
            versions: Some(versions.collect()),
        });
        Self::answer(call, ChatOpT::MessageEditsResponse(Box::new(answer)))
    }
}

/// Every change of every conversation of the caller, live (`AllConversations`, target 0
/// or the caller); or the typing and presence signals sent to the caller (`Presence`,
/// which the edge delivers as datagrams). Nothing is replayed here: a client subscribes, then syncs from its
/// cursor, and drops what it already has (see the module docs of `crate::chat`).
async fn subscribe<S: Store + Clone + 'static>(
    w: ChatWire<S>,
    kind: SubscriptionKind,
    call: Call,
) -> Result<Subscription> {
    if kind != SubscriptionKind::AllConversations && kind != SubscriptionKind::Presence {
        return Err(Error::Unavailable("this subscription"));
    }
    let me = call.user()?;
    let target = call
        .op(|e| e.body_as_control()?.op_as_subscribe_request())?
        .target_id();
    if target != 0 && target != me {
        return Err(Error::Forbidden("only your own conversations"));
    }
    let delivery = w.0.delivery()?.clone();
    let events = delivery.subscribe(Topic::new(kind, me)).await?;
    Ok(Subscription::new(Vec::new(), events))
}

impl<S: Store + Clone + 'static> crate::plane::Datagrams for ChatWire<S> {
    fn datagram(
        &self,
        user: u64,
        datagram: selfie_codec::DatagramFrame,
    ) -> futures::future::LocalBoxFuture<'static, Result<()>> {
        use selfie_protocol::datagram::DatagramBody;
        let chat = self.0.clone();
        Box::pin(async move {
            let d = datagram.datagram();
            match d.body_type() {
                DatagramBody::Typing => {
                    let t = d
                        .body_as_typing()
                        .ok_or(Error::InvalidArgument { field: "body" })?;
                    chat.typing(user, t.conversation_id(), t.typing()).await
                }
                DatagramBody::Presence => {
                    let p = d
                        .body_as_presence()
                        .ok_or(Error::InvalidArgument { field: "body" })?;
                    chat.presence(user, p.status().0).await
                }
                _ => Err(Error::InvalidArgument { field: "body" }),
            }
        })
    }
}
