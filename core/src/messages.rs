//! Messages between staff, instructors and students: a message in a thread, one
//! `message_participants` row per participant (the sender's already read), and the `new_message`
//! notifications of every other participant — by push at once, and by email only if the message
//! is still unread [`EMAIL_DELAY`] later. The two are separate notifications with channel
//! overrides: reading the message cancels the pending email by its dedupe key. Owns writes to
//! `messages` and `message_participants`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::{
    analytics,
    error::DomainError,
    kinds::{Channel, Kind},
    notify::{self, NewNotification},
};

/// How long a message may stay unread before the email goes out.
pub const EMAIL_DELAY: chrono::Duration = chrono::Duration::minutes(15);

/// Most participants a message may have.
pub const MAX_PARTICIPANTS: usize = 50;

/// Characters of a message shown in its notifications.
const PREVIEW_CHARS: usize = 140;

/// The dedupe key of the delayed email of a message to a user.
pub fn email_key(message_id: i64, user_id: i64) -> String {
    format!("new_message_email:{message_id}:{user_id}")
}

/// A message to send.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// `users.id` of the sender.
    pub sender_id: i64,
    /// The other participants (`users.id`); the sender may be listed too.
    pub participant_ids: Vec<i64>,
    /// An existing thread to post in; a new one when `None`.
    pub thread_id: Option<Uuid>,
    /// 1 to 10 000 characters.
    pub content: String,
}

/// A participant of a message.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Participant {
    /// `users.id`.
    pub user_id: i64,
    /// Read yet.
    pub is_read: bool,
    /// When.
    pub read_at: Option<DateTime<Utc>>,
}

/// A message with its participants.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// Id.
    pub id: i64,
    /// The thread.
    pub thread_id: Uuid,
    /// The sender (`users.id`).
    pub sender_id: i64,
    /// Text.
    pub content: String,
    /// Sent.
    pub created_at: DateTime<Utc>,
    /// Everyone on it, the sender included.
    pub participants: Vec<Participant>,
}

fn preview(content: &str) -> String {
    let flat: String = content.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= PREVIEW_CHARS {
        flat
    } else {
        let cut: String = flat.chars().take(PREVIEW_CHARS - 1).collect();
        format!("{}…", cut.trim_end())
    }
}

/// Sends a message: the row, its participants, and each other participant's two `new_message`
/// notifications (push now; email at `now + EMAIL_DELAY` unless read first).
pub async fn send(conn: &mut PgConnection, nm: NewMessage, now: DateTime<Utc>) -> Result<Message, DomainError> {
    let n = nm.content.chars().count();
    if n == 0 || nm.content.trim().is_empty() || n > 10_000 {
        return Err(DomainError::invalid("content", "expected 1 to 10000 characters"));
    }
    // The cap first, on the list as given (the sender may be listed too), so the work below
    // is bounded whatever the body holds; then duplicates go, in one pass with a set.
    if nm.participant_ids.len() > MAX_PARTICIPANTS + 1 {
        return Err(DomainError::invalid(
            "participant_ids",
            format!("at most {MAX_PARTICIPANTS} participants"),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(nm.participant_ids.len());
    let others: Vec<i64> = nm
        .participant_ids
        .iter()
        .copied()
        .filter(|id| *id != nm.sender_id && seen.insert(*id))
        .collect();
    if others.is_empty() {
        return Err(DomainError::invalid(
            "participant_ids",
            "name at least one participant besides the sender",
        ));
    }
    if others.len() > MAX_PARTICIPANTS {
        return Err(DomainError::invalid(
            "participant_ids",
            format!("at most {MAX_PARTICIPANTS} participants"),
        ));
    }
    let mut ids = others.clone();
    ids.push(nm.sender_id);
    let found = sqlx::query!(
        r#"SELECT id, first_name || ' ' || last_name AS "name!" FROM users WHERE id = ANY($1) AND status = 'active'"#,
        &ids,
    )
    .fetch_all(&mut *conn)
    .await?;
    let names: HashMap<i64, String> = found.into_iter().map(|r| (r.id, r.name)).collect();
    let Some(sender_name) = names.get(&nm.sender_id).cloned() else {
        return Err(DomainError::invalid("sender_id", "no such active user"));
    };
    if let Some(i) = nm.participant_ids.iter().position(|id| !names.contains_key(id)) {
        return Err(DomainError::invalid(format!("participant_ids[{i}]"), "no such active user"));
    }
    let thread_id = nm.thread_id.unwrap_or_else(Uuid::new_v4);
    let inserted = sqlx::query!(
        "INSERT INTO messages (sender_id, thread_id, content, created_at) VALUES ($1, $2, $3, $4) RETURNING id, created_at",
        nm.sender_id,
        thread_id,
        nm.content,
        now,
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    let (id, created_at) = (inserted.id, inserted.created_at);
    let participants: Vec<Participant> = sqlx::query_as!(
        Participant,
        "INSERT INTO message_participants (message_id, user_id, is_read, read_at)
         SELECT $1, u, u = $2, CASE WHEN u = $2 THEN $3::timestamptz END FROM unnest($4::bigint[]) AS t(u)
         RETURNING user_id, is_read, read_at",
        id,
        nm.sender_id,
        now,
        &ids,
    )
    .fetch_all(&mut *conn)
    .await?;

    let data = json!({"sender_name": sender_name, "preview": preview(&nm.content), "thread_id": thread_id, "message_id": id});
    for user in &others {
        let mut push = NewNotification::to_user(Kind::NewMessage, *user, format!("new_message:{id}:{user}"), now);
        push.title = format!("Message from {sender_name}");
        push.content = preview(&nm.content);
        push.data = data.clone();
        push.message_id = Some(id);
        push.channels = Some(vec![Channel::Push]);
        notify::create(conn, push).await?;

        let mut email = NewNotification::to_user(Kind::NewMessage, *user, email_key(id, *user), now);
        email.title = format!("Unread message from {sender_name}");
        email.content = preview(&nm.content);
        email.data = data.clone();
        email.message_id = Some(id);
        email.channels = Some(vec![Channel::Email]);
        email.due_at = now + EMAIL_DELAY;
        notify::create(conn, email).await?;
    }
    analytics::record(
        conn,
        Some(nm.sender_id),
        "message_sent",
        json!({"message_id": id, "thread_id": thread_id, "recipients": others.len()}),
        now,
    )
    .await?;
    Ok(Message {
        id,
        thread_id,
        sender_id: nm.sender_id,
        content: nm.content,
        created_at,
        participants,
    })
}

/// What [`mark_read`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ReadReceipt {
    /// The message.
    pub message_id: i64,
    /// The reader.
    pub user_id: i64,
    /// When it was read (the first time).
    pub read_at: DateTime<Utc>,
    /// Whether a pending email about it was cancelled now.
    pub email_cancelled: bool,
}

/// Marks a message read by a participant and cancels the pending email about it. Reading it
/// again changes nothing. An unknown message is `NotFound`; a user not on it is an invalid
/// `user_id`.
pub async fn mark_read(conn: &mut PgConnection, message_id: i64, user_id: i64, now: DateTime<Utc>) -> Result<ReadReceipt, DomainError> {
    let exists: bool = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1) AS "exists!""#, message_id)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Err(DomainError::NotFound("message"));
    }
    // `read_at` is never NULL once set here (coalesce with `now`).
    let read_at: Option<DateTime<Utc>> = sqlx::query_scalar!(
        r#"UPDATE message_participants SET is_read = true, read_at = coalesce(read_at, $3)
         WHERE message_id = $1 AND user_id = $2 RETURNING read_at AS "read_at!""#,
        message_id,
        user_id,
        now,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let read_at = read_at.ok_or_else(|| DomainError::invalid("user_id", "not a participant of this message"))?;
    let email_cancelled = notify::cancel_by_key(conn, &email_key(message_id, user_id), "the message was read first").await?;
    Ok(ReadReceipt {
        message_id,
        user_id,
        read_at,
        email_cancelled,
    })
}

/// One thread of a user's.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadSummary {
    /// The thread.
    pub thread_id: Uuid,
    /// Messages in it the user takes part in.
    pub messages: i64,
    /// Of those, unread by the user.
    pub unread: i64,
    /// Everyone who takes part in the thread (`users.id`).
    pub participant_ids: Vec<i64>,
    /// Its newest message.
    pub last_message: LastMessage,
}

/// The newest message of a thread.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct LastMessage {
    /// Id.
    pub id: i64,
    /// Sender (`users.id`).
    pub sender_id: i64,
    /// Sender's name.
    pub sender_name: String,
    /// Text.
    pub content: String,
    /// Sent.
    pub created_at: DateTime<Utc>,
}

#[derive(Debug)]
struct ThreadRow {
    thread_id: Uuid,
    messages: i64,
    unread: i64,
    participant_ids: Vec<i64>,
    id: i64,
    sender_id: i64,
    sender_name: String,
    content: String,
    created_at: DateTime<Utc>,
}

/// A user's threads, the one with the newest message first, with unread counts; `before` is the
/// last message id of the previous page. At most `limit` threads. An unknown user is
/// `NotFound`.
pub async fn threads(conn: &mut PgConnection, user_id: i64, limit: i64, before: Option<i64>) -> Result<Vec<ThreadSummary>, DomainError> {
    let exists: bool = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM users WHERE id = $1) AS "exists!""#, user_id)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Err(DomainError::NotFound("user"));
    }
    let rows: Vec<ThreadRow> = sqlx::query_as!(
        ThreadRow,
        r#"WITH mine AS (
             SELECT m.thread_id, count(*) AS messages, count(*) FILTER (WHERE NOT mp.is_read) AS unread, max(m.id) AS last_id
             FROM message_participants mp JOIN messages m ON m.id = mp.message_id
             WHERE mp.user_id = $1
             GROUP BY m.thread_id)
         SELECT mine.thread_id AS "thread_id!", mine.messages AS "messages!", mine.unread AS "unread!",
                (SELECT array_agg(DISTINCT p.user_id ORDER BY p.user_id) FROM messages tm JOIN message_participants p ON p.message_id = tm.id
                 WHERE tm.thread_id = mine.thread_id) AS "participant_ids!",
                m.id, m.sender_id, u.first_name || ' ' || u.last_name AS "sender_name!", m.content, m.created_at
         FROM mine JOIN messages m ON m.id = mine.last_id JOIN users u ON u.id = m.sender_id
         WHERE ($2::bigint IS NULL OR mine.last_id < $2)
         ORDER BY mine.last_id DESC
         LIMIT $3"#,
        user_id,
        before,
        limit,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ThreadSummary {
            thread_id: r.thread_id,
            messages: r.messages,
            unread: r.unread,
            participant_ids: r.participant_ids,
            last_message: LastMessage {
                id: r.id,
                sender_id: r.sender_id,
                sender_name: r.sender_name,
                content: r.content,
                created_at: r.created_at,
            },
        })
        .collect())
}

/// Erasure: the bodies of the messages the person wrote are gone (`[erased]`); in the other
/// messages of their threads, their name, address and number become the pseudonym. Who took
/// part stays (as user ids). Returns the rows changed.
pub async fn erase_person(conn: &mut PgConnection, e: &crate::privacy::Erasing) -> Result<u64, sqlx::Error> {
    let mut n = sqlx::query!(
        "UPDATE messages SET content = '[erased]' WHERE sender_id = $1 AND message_type = 'text'",
        e.user_id
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    n += sqlx::query!(
        "UPDATE messages SET content = erase_needles(content, $2, $3)
         WHERE thread_id IN (SELECT m.thread_id FROM messages m JOIN message_participants p ON p.message_id = m.id WHERE p.user_id = $1
                             UNION SELECT thread_id FROM messages WHERE sender_id = $1)
           AND content <> erase_needles(content, $2, $3)",
        e.user_id,
        &e.needles,
        e.pseudonym,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n)
}
