//! A real SMTP server on loopback ([`SmtpServer`]) that end-to-end tests point Dashlight's mail
//! sender at. It owns the SMTP side of the tests: accepting connections, speaking the RFC 5321
//! subset lettre uses (EHLO/HELO, AUTH PLAIN/LOGIN, MAIL, RCPT, DATA with dot-unstuffing, RSET,
//! NOOP, QUIT), recording accepted messages, and simulating failures ([`SmtpMode`]) and outages
//! ([`SmtpServer::pause`]).
//!
//! The server speaks plain SMTP only (no STARTTLS, not advertised). Point lettre at it with the
//! URL from [`SmtpServer::url`], `smtp://127.0.0.1:PORT` with no `tls` query parameter: lettre
//! 0.11's `from_url` maps scheme `smtp` without `?tls=` to a plain connection (`?tls=none` is *not*
//! accepted by lettre). Credentials may be added as `smtp://user:pass@127.0.0.1:PORT`; any
//! credentials are accepted and the user name is recorded in [`ReceivedMail::auth_user`].

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
    task::{JoinHandle, JoinSet},
};

use crate::wait::wait_for_count;

/// Largest message the server accepts (advertised as `SIZE`); bigger ones get `552`.
pub const MAX_MESSAGE_SIZE: usize = 10 * 1024 * 1024;

/// How the server answers transactions; switch at any time with [`SmtpServer::set_mode`].
/// The mode is read at `RCPT TO` and again at the end of `DATA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmtpMode {
    /// Accept and record every message.
    #[default]
    Accept,
    /// Answer `451 4.3.0` (transient) to `RCPT TO` and to the end of `DATA`.
    TempFail,
    /// Answer `550 5.1.1` to `RCPT TO` and `554 5.6.0` to the end of `DATA` (permanent).
    PermFail,
}

/// One message the server accepted (answered `250` to the end of `DATA`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The reverse path from `MAIL FROM:<...>`, without angle brackets (empty for `<>`).
    pub mail_from: String,
    /// The forward paths from every accepted `RCPT TO:<...>`, without angle brackets.
    pub rcpt_to: Vec<String>,
    /// The message as transmitted after `DATA`, dot-unstuffed, CRLF line endings kept, without
    /// the terminating `.` line. Parse it with `mail-parser`.
    pub data: Vec<u8>,
    /// The user name given with `AUTH` on this connection, if the client authenticated.
    pub auth_user: Option<String>,
}

/// State shared by the handle, the accept loop and every session.
struct Shared {
    mode: Mutex<SmtpMode>,
    messages: Mutex<Vec<ReceivedMail>>,
    rejected: AtomicUsize,
    connections: AtomicUsize,
    count: watch::Sender<usize>,
}

/// A plain-text SMTP server on `127.0.0.1`, stopped when dropped.
pub struct SmtpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl SmtpServer {
    /// Binds `127.0.0.1:0` and starts serving on the current tokio runtime.
    pub async fn start() -> anyhow::Result<SmtpServer> {
        let listener = bind("127.0.0.1:0".parse()?)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: Mutex::new(SmtpMode::Accept),
            messages: Mutex::new(Vec::new()),
            rejected: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            count: watch::channel(0).0,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        tracing::debug!(%addr, "test SMTP server listening");
        Ok(SmtpServer {
            addr,
            shared,
            accept: Mutex::new(Some(task)),
        })
    }

    /// The address the server listens on (kept across [`pause`](Self::pause)/[`resume`](Self::resume)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `smtp://127.0.0.1:PORT`: a lettre URL for a plain (no TLS) connection to this server.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Like [`url`](Self::url) with credentials: `smtp://user:password@127.0.0.1:PORT`
    /// (`user` and `password` are used verbatim, so keep them URL-safe).
    pub fn url_with_credentials(&self, user: &str, password: &str) -> String {
        format!("smtp://{user}:{password}@{}", self.addr)
    }

    /// Switches how transactions are answered, effective for the next `RCPT TO` / end of `DATA`.
    pub fn set_mode(&self, mode: SmtpMode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// The current [`SmtpMode`].
    pub fn mode(&self) -> SmtpMode {
        *self.shared.mode.lock().unwrap()
    }

    /// Simulates an outage: closes the listening socket (new connections are refused) and drops
    /// every open session (pooled clients see their connection reset or closed). Returns once the
    /// socket is closed. Idempotent.
    pub async fn pause(&self) {
        let task = self.accept.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            // Dropping the aborted task drops the listener and the JoinSet of sessions.
            let _ = task.await;
            tracing::debug!(addr = %self.addr, "test SMTP server paused");
        }
    }

    /// Ends an outage: listens again on the same address. Idempotent.
    pub async fn resume(&self) -> anyhow::Result<()> {
        if self.accept.lock().unwrap().is_some() {
            return Ok(());
        }
        let listener = bind(self.addr).map_err(|e| anyhow::anyhow!("re-listening on {} after pause: {e}", self.addr))?;
        let task = tokio::spawn(accept_loop(listener, self.shared.clone()));
        *self.accept.lock().unwrap() = Some(task);
        tracing::debug!(addr = %self.addr, "test SMTP server resumed");
        Ok(())
    }

    /// Whether the server is currently listening (not paused).
    pub fn is_listening(&self) -> bool {
        self.accept.lock().unwrap().is_some()
    }

    /// Every message accepted so far, in order of acceptance.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.shared.messages.lock().unwrap().clone()
    }

    /// How many rejection replies (`451`/`550`/`554` from [`SmtpMode`]) the server has sent.
    pub fn rejected_count(&self) -> usize {
        self.shared.rejected.load(Ordering::SeqCst)
    }

    /// How many TCP connections the server has accepted (to check clients pool connections).
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits (woken by each accepted message, no polling) until at least `n` messages were
    /// accepted and returns all of them; errors after `timeout` listing what did arrive.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<ReceivedMail>> {
        match wait_for_count(self.shared.count.subscribe(), n, timeout).await {
            Ok(()) => Ok(self.messages()),
            Err(got) => {
                let summary: Vec<String> = self
                    .messages()
                    .iter()
                    .map(|m| format!("{} -> {:?}", m.mail_from, m.rcpt_to))
                    .collect();
                anyhow::bail!(
                    "timed out after {timeout:?} waiting for {n} SMTP message(s); got {got} ({} rejection(s)): {summary:?}",
                    self.rejected_count()
                )
            }
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// Binds with `SO_REUSEADDR` so [`SmtpServer::resume`] can re-listen on the same port while
/// connections from before the pause linger in `TIME_WAIT`.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections until aborted; aborting drops the listener and every session with it.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let shared = shared.clone();
                    sessions.spawn(async move {
                        if let Err(e) = serve(stream, &shared).await {
                            tracing::debug!(%peer, error = %e, "test SMTP session ended with an I/O error");
                        }
                    });
                }
                Err(e) => {
                    // E.g. EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "test SMTP server accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

async fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (reader, writer) = stream.into_split();
    Session::new(BufReader::new(reader), writer, shared).run().await
}

/// An open mail transaction (after `MAIL FROM`).
struct Transaction {
    mail_from: String,
    rcpt_to: Vec<String>,
}

/// One SMTP connection.
struct Session<'a, R, W> {
    reader: R,
    writer: W,
    shared: &'a Shared,
    greeted: bool,
    auth_user: Option<String>,
    transaction: Option<Transaction>,
}

impl<'a, R, W> Session<'a, R, W>
where
    R: AsyncBufReadExt + AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    fn new(reader: R, writer: W, shared: &'a Shared) -> Self {
        Session {
            reader,
            writer,
            shared,
            greeted: false,
            auth_user: None,
            transaction: None,
        }
    }

    async fn reply(&mut self, text: &str) -> io::Result<()> {
        self.writer.write_all(text.as_bytes()).await?;
        self.writer.write_all(b"\r\n").await?;
        self.writer.flush().await
    }

    /// Reads one line without its line ending; `None` at end of stream.
    async fn read_line(&mut self) -> io::Result<Option<String>> {
        let mut raw = Vec::new();
        if self.reader.read_until(b'\n', &mut raw).await? == 0 {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&raw);
        Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
    }

    async fn run(mut self) -> io::Result<()> {
        self.reply("220 127.0.0.1 ESMTP dashlight-tests ready").await?;
        while let Some(line) = self.read_line().await? {
            let (verb, arg) = match line.split_once(' ') {
                Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim().to_owned()),
                None => (line.to_ascii_uppercase(), String::new()),
            };
            match verb.as_str() {
                "EHLO" | "HELO" if arg.is_empty() => self.reply("501 5.5.4 Domain name required").await?,
                "EHLO" => {
                    self.greeted = true;
                    self.transaction = None;
                    let text = format!(
                        "250-127.0.0.1 greets {arg}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-SIZE {MAX_MESSAGE_SIZE}\r\n250-AUTH PLAIN LOGIN\r\n250 ENHANCEDSTATUSCODES"
                    );
                    self.reply(&text).await?;
                }
                "HELO" => {
                    self.greeted = true;
                    self.transaction = None;
                    self.reply(&format!("250 127.0.0.1 greets {arg}")).await?;
                }
                "AUTH" => self.auth(&arg).await?,
                "MAIL" => self.mail(&arg).await?,
                "RCPT" => self.rcpt(&arg).await?,
                "DATA" => self.data().await?,
                "RSET" => {
                    self.transaction = None;
                    self.reply("250 2.0.0 Ok").await?;
                }
                "NOOP" => self.reply("250 2.0.0 Ok").await?,
                "VRFY" => self.reply("252 2.1.5 Cannot VRFY user, but will accept message").await?,
                "QUIT" => {
                    self.reply("221 2.0.0 Bye").await?;
                    return Ok(());
                }
                "STARTTLS" => self.reply("502 5.5.1 STARTTLS not supported by this test server").await?,
                _ => self.reply("502 5.5.2 Command not recognized").await?,
            }
        }
        Ok(())
    }

    async fn auth(&mut self, arg: &str) -> io::Result<()> {
        if !self.greeted {
            return self.reply("503 5.5.1 Send EHLO first").await;
        }
        if self.auth_user.is_some() {
            return self.reply("503 5.5.1 Already authenticated").await;
        }
        if self.transaction.is_some() {
            return self.reply("503 5.5.1 AUTH not allowed during a mail transaction").await;
        }
        let (mechanism, initial) = match arg.split_once(' ') {
            Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim().to_owned())),
            None => (arg.to_ascii_uppercase(), None),
        };
        let user = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(i) => i,
                    None => {
                        self.reply("334 ").await?;
                        match self.read_line().await? {
                            Some(line) => line,
                            None => return Ok(()),
                        }
                    }
                };
                // authzid NUL authcid NUL passwd
                decode_b64(&response).and_then(|plain| {
                    let mut parts = plain.split('\0');
                    let _authzid = parts.next()?;
                    let authcid = parts.next()?;
                    let _password = parts.next()?;
                    Some(authcid.to_owned())
                })
            }
            "LOGIN" => {
                let user = match initial {
                    Some(i) => Some(i),
                    None => {
                        self.reply("334 VXNlcm5hbWU6").await?;
                        self.read_line().await?
                    }
                };
                let Some(user) = user else { return Ok(()) };
                self.reply("334 UGFzc3dvcmQ6").await?;
                let Some(password) = self.read_line().await? else {
                    return Ok(());
                };
                if password == "*" { None } else { decode_b64(&user) }
            }
            _ => {
                return self.reply("504 5.5.4 Unrecognized authentication mechanism").await;
            }
        };
        match user {
            Some(user) => {
                self.auth_user = Some(user);
                self.reply("235 2.7.0 Authentication successful").await
            }
            None => self.reply("501 5.5.2 Cannot decode AUTH response").await,
        }
    }

    async fn mail(&mut self, arg: &str) -> io::Result<()> {
        if !self.greeted {
            return self.reply("503 5.5.1 Send EHLO/HELO first").await;
        }
        if self.transaction.is_some() {
            return self.reply("503 5.5.1 Nested MAIL command").await;
        }
        let Some(mail_from) = parse_path(arg, "FROM:") else {
            return self.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await;
        };
        self.transaction = Some(Transaction {
            mail_from,
            rcpt_to: Vec::new(),
        });
        self.reply("250 2.1.0 Ok").await
    }

    async fn rcpt(&mut self, arg: &str) -> io::Result<()> {
        if self.transaction.is_none() {
            return self.reply("503 5.5.1 Need MAIL before RCPT").await;
        }
        let Some(rcpt) = parse_path(arg, "TO:").filter(|r| !r.is_empty()) else {
            return self.reply("501 5.5.4 Syntax: RCPT TO:<address>").await;
        };
        match self.current_mode() {
            SmtpMode::Accept => {
                if let Some(tx) = self.transaction.as_mut() {
                    tx.rcpt_to.push(rcpt);
                }
                self.reply("250 2.1.5 Ok").await
            }
            SmtpMode::TempFail => {
                self.shared.rejected.fetch_add(1, Ordering::SeqCst);
                self.reply("451 4.3.0 Temporary failure, try again later (test server TempFail)")
                    .await
            }
            SmtpMode::PermFail => {
                self.shared.rejected.fetch_add(1, Ordering::SeqCst);
                self.reply("550 5.1.1 Mailbox unavailable (test server PermFail)").await
            }
        }
    }

    async fn data(&mut self) -> io::Result<()> {
        match &self.transaction {
            None => return self.reply("503 5.5.1 Need MAIL command").await,
            Some(tx) if tx.rcpt_to.is_empty() => {
                return self.reply("554 5.5.1 No valid recipients").await;
            }
            Some(_) => {}
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        let mut data = Vec::new();
        let mut too_big = false;
        loop {
            let mut line = Vec::new();
            if self.reader.read_until(b'\n', &mut line).await? == 0 {
                return Ok(()); // Connection closed mid-message: nothing is accepted.
            }
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            let unstuffed = if line.first() == Some(&b'.') { &line[1..] } else { &line[..] };
            if data.len() + unstuffed.len() > MAX_MESSAGE_SIZE {
                too_big = true;
            } else {
                data.extend_from_slice(unstuffed);
            }
        }
        let tx = self.transaction.take().expect("checked above");
        if too_big {
            return self.reply("552 5.3.4 Message size exceeds fixed limit").await;
        }
        match self.current_mode() {
            SmtpMode::Accept => {}
            SmtpMode::TempFail => {
                self.shared.rejected.fetch_add(1, Ordering::SeqCst);
                return self
                    .reply("451 4.3.0 Temporary failure, try again later (test server TempFail)")
                    .await;
            }
            SmtpMode::PermFail => {
                self.shared.rejected.fetch_add(1, Ordering::SeqCst);
                return self.reply("554 5.6.0 Message rejected (test server PermFail)").await;
            }
        }
        let mail = ReceivedMail {
            mail_from: tx.mail_from,
            rcpt_to: tx.rcpt_to,
            data,
            auth_user: self.auth_user.clone(),
        };
        let id = {
            let mut messages = self.shared.messages.lock().unwrap();
            messages.push(mail);
            messages.len()
        };
        self.shared.count.send_replace(id);
        self.reply(&format!("250 2.0.0 Ok: queued as {id}")).await
    }

    fn current_mode(&self) -> SmtpMode {
        *self.shared.mode.lock().unwrap()
    }
}

/// Parses `FROM:<addr> [params]` / `TO:<addr> [params]` (keyword case-insensitive); returns the
/// address without brackets (`""` for the null path `<>`).
fn parse_path(arg: &str, keyword: &str) -> Option<String> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>')?;
        Some(inner[..end].to_owned())
    } else {
        // Lenient: a bare address up to the first space.
        rest.split_whitespace().next().map(str::to_owned)
    }
}

fn decode_b64(text: &str) -> Option<String> {
    if text == "=" {
        return Some(String::new());
    }
    B64.decode(text.trim()).ok().and_then(|bytes| String::from_utf8(bytes).ok())
}

#[cfg(test)]
mod tests {
    use lettre::{
        AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
        message::header::ContentType,
        transport::smtp::authentication::{Credentials, Mechanism},
    };
    use mail_parser::MessageParser;
    use tokio::io::AsyncReadExt;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn message(to: &str, subject: &str, body: &str) -> Message {
        Message::builder()
            .from("Dashlight <noreply@school.test>".parse().unwrap())
            .to(to.parse().unwrap())
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_owned())
            .unwrap()
    }

    fn transport(url: &str) -> AsyncSmtpTransport<Tokio1Executor> {
        AsyncSmtpTransport::<Tokio1Executor>::from_url(url).unwrap().build()
    }

    #[tokio::test]
    async fn lettre_delivers_over_plain_smtp_and_mail_parser_reads_it() {
        let server = SmtpServer::start().await.unwrap();
        let mailer = transport(&server.url());
        // Lines starting with "." exercise dot-stuffing (the ASCII body goes out as 7bit, so the
        // raw data must match); the subject exercises RFC 2047 encoded words.
        let body = "Hi Jorg,\n.hidden line kept\nyour lesson is at 10:00.\n.\n..two dots\n";
        for i in 0..3 {
            mailer
                .send(message(
                    &format!("student{i}@school.test"),
                    &format!("Fahrstunde {i} für Jörg"),
                    body,
                ))
                .await
                .unwrap();
        }
        let got = server.wait_for_messages(3, WAIT).await.unwrap();
        assert_eq!(got.len(), 3);
        // lettre's pool parks a connection from a spawned task, so an immediate next send may
        // open a second one; several messages per connection are proven by `raw_protocol_dialogue`.
        assert!((1..=3).contains(&server.connection_count()));
        for (i, mail) in got.iter().enumerate() {
            assert_eq!(mail.mail_from, "noreply@school.test");
            assert_eq!(mail.rcpt_to, vec![format!("student{i}@school.test")]);
            assert_eq!(mail.auth_user, None);
            let raw = String::from_utf8(mail.data.clone()).unwrap();
            // lettre terminates the body with CRLF before sending "CRLF . CRLF".
            assert!(
                raw.contains("\r\n\r\nHi Jorg,\r\n.hidden line kept\r\nyour lesson is at 10:00.\r\n.\r\n..two dots\r\n\r\n"),
                "{raw:?}"
            );
            let parsed = MessageParser::default().parse(&mail.data).unwrap();
            assert_eq!(parsed.subject(), Some(format!("Fahrstunde {i} für Jörg").as_str()));
            let text = parsed.body_text(0).unwrap().replace("\r\n", "\n");
            assert_eq!(text.trim_end_matches('\n'), body.trim_end_matches('\n'));
        }
        assert_eq!(server.rejected_count(), 0);
    }

    #[tokio::test]
    async fn auth_plain_and_login_are_accepted_and_recorded() {
        let server = SmtpServer::start().await.unwrap();
        transport(&server.url_with_credentials("mailer", "s3cret"))
            .send(message("a@school.test", "plain", "x"))
            .await
            .unwrap();
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(server.addr().port())
            .credentials(Credentials::new("login-user".into(), "pw".into()))
            .authentication(vec![Mechanism::Login])
            .build()
            .send(message("b@school.test", "login", "y"))
            .await
            .unwrap();
        let got = server.wait_for_messages(2, WAIT).await.unwrap();
        assert_eq!(got[0].auth_user.as_deref(), Some("mailer"));
        assert_eq!(got[1].auth_user.as_deref(), Some("login-user"));
    }

    #[tokio::test]
    async fn modes_produce_transient_and_permanent_errors_and_can_be_switched_back() {
        let server = SmtpServer::start().await.unwrap();
        let mailer = transport(&server.url());

        server.set_mode(SmtpMode::TempFail);
        let err = mailer.send(message("a@school.test", "t", "x")).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert_eq!(err.status().map(|c| c.to_string()), Some("451".into()));

        server.set_mode(SmtpMode::PermFail);
        let err = mailer.send(message("a@school.test", "p", "x")).await.unwrap_err();
        assert!(err.is_permanent(), "{err:?}");
        assert_eq!(err.status().map(|c| c.to_string()), Some("550".into()));

        assert_eq!(server.rejected_count(), 2);
        assert!(server.messages().is_empty());

        server.set_mode(SmtpMode::Accept);
        mailer.send(message("a@school.test", "ok", "x")).await.unwrap();
        let got = server.wait_for_messages(1, WAIT).await.unwrap();
        assert_eq!(got.len(), 1);
    }

    #[tokio::test]
    async fn pause_refuses_connections_and_resume_listens_on_the_same_port() {
        let server = SmtpServer::start().await.unwrap();
        let mailer = transport(&server.url());
        mailer.send(message("a@school.test", "before", "x")).await.unwrap();

        server.pause().await;
        assert!(!server.is_listening());
        let err = TcpStream::connect(server.addr()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        // The pooled connection was dropped too, and no new one can be made.
        let err = mailer.send(message("a@school.test", "during", "x")).await.unwrap_err();
        assert!(!err.is_permanent(), "{err:?}");
        let fresh = transport(&server.url()).send(message("a@school.test", "during", "x")).await;
        assert!(fresh.is_err());

        server.resume().await.unwrap();
        assert!(server.is_listening());
        mailer.send(message("a@school.test", "after", "x")).await.unwrap();
        let got = server.wait_for_messages(2, WAIT).await.unwrap();
        let subjects: Vec<String> = got
            .iter()
            .map(|m| MessageParser::default().parse(&m.data).unwrap().subject().unwrap().to_owned())
            .collect();
        assert_eq!(subjects, ["before", "after"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_clients() {
        let server = SmtpServer::start().await.unwrap();
        let mailer = transport(&server.url());
        let mut tasks = JoinSet::new();
        for i in 0..40 {
            let mailer = mailer.clone();
            tasks.spawn(async move { mailer.send(message(&format!("s{i}@school.test"), "bulk", "x")).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let got = server.wait_for_messages(40, WAIT).await.unwrap();
        let mut rcpts: Vec<String> = got.iter().map(|m| m.rcpt_to[0].clone()).collect();
        rcpts.sort();
        rcpts.dedup();
        assert_eq!(rcpts.len(), 40);
        assert!(server.connection_count() > 1, "concurrent sends should open several connections");
    }

    #[tokio::test]
    async fn wait_for_messages_times_out_with_a_useful_error() {
        let server = SmtpServer::start().await.unwrap();
        let err = server.wait_for_messages(1, Duration::from_millis(50)).await.unwrap_err();
        assert!(err.to_string().contains("waiting for 1 SMTP message"), "{err}");
    }

    /// Drives the protocol by hand: sequencing errors, RSET, HELO, several messages per
    /// connection, dot-unstuffing of the raw wire form, AUTH PLAIN with a continuation.
    #[tokio::test]
    async fn raw_protocol_dialogue() {
        let server = SmtpServer::start().await.unwrap();
        let stream = TcpStream::connect(server.addr()).await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);

        async fn expect<Rd: AsyncBufReadExt + Unpin>(r: &mut Rd, code: &str) -> String {
            let mut all = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                assert!(line.starts_with(code), "expected {code}, got {line:?} (after {all:?})");
                all.push_str(&line);
                if line.as_bytes().get(3) == Some(&b' ') {
                    return all;
                }
            }
        }
        async fn send<Wr: AsyncWrite + Unpin>(w: &mut Wr, line: &str) {
            w.write_all(line.as_bytes()).await.unwrap();
            w.write_all(b"\r\n").await.unwrap();
        }

        expect(&mut r, "220").await;
        send(&mut w, "MAIL FROM:<a@b>").await;
        expect(&mut r, "503").await;
        send(&mut w, "HELO client.test").await;
        expect(&mut r, "250").await;
        send(&mut w, "RCPT TO:<x@y>").await;
        expect(&mut r, "503").await;
        send(&mut w, "EHLO client.test").await;
        let ehlo = expect(&mut r, "250").await;
        assert!(ehlo.contains("8BITMIME") && ehlo.contains("SIZE") && ehlo.contains("AUTH PLAIN LOGIN"));
        send(&mut w, "AUTH PLAIN").await;
        expect(&mut r, "334").await;
        send(&mut w, &B64.encode("\0raw-user\0pw")).await;
        expect(&mut r, "235").await;
        send(&mut w, "mail from:<> SIZE=10 BODY=8BITMIME").await;
        expect(&mut r, "250").await;
        send(&mut w, "DATA").await;
        expect(&mut r, "554").await; // no recipients yet; the transaction stays open
        send(&mut w, "RSET").await;
        expect(&mut r, "250").await;
        send(&mut w, "RCPT TO:<x@y>").await;
        expect(&mut r, "503").await; // RSET ended the transaction
        send(&mut w, "NOOP").await;
        expect(&mut r, "250").await;

        for n in 1..=2 {
            send(&mut w, "MAIL FROM:<bounce@school.test>").await;
            expect(&mut r, "250").await;
            send(&mut w, "RCPT TO:<one@school.test>").await;
            expect(&mut r, "250").await;
            send(&mut w, "RCPT TO:<two@school.test>").await;
            expect(&mut r, "250").await;
            send(&mut w, "DATA").await;
            expect(&mut r, "354").await;
            w.write_all(format!("Subject: n{n}\r\n\r\n..starts with dot\r\n.\r\n").as_bytes())
                .await
                .unwrap();
            expect(&mut r, "250").await;
        }
        send(&mut w, "QUIT").await;
        expect(&mut r, "221").await;
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());

        let got = server.wait_for_messages(2, WAIT).await.unwrap();
        assert_eq!(got[0].mail_from, "bounce@school.test");
        assert_eq!(got[0].rcpt_to, ["one@school.test", "two@school.test"]);
        assert_eq!(got[0].data, b"Subject: n1\r\n\r\n.starts with dot\r\n");
        assert_eq!(got[1].data, b"Subject: n2\r\n\r\n.starts with dot\r\n");
        assert_eq!(got[1].auth_user.as_deref(), Some("raw-user"));
        assert_eq!(server.connection_count(), 1);
    }

    #[test]
    fn path_parsing() {
        assert_eq!(parse_path("FROM:<a@b.c> SIZE=1", "FROM:"), Some("a@b.c".into()));
        assert_eq!(parse_path("from: <>", "FROM:"), Some(String::new()));
        assert_eq!(parse_path("TO:x@y", "TO:"), Some("x@y".into()));
        assert_eq!(parse_path("TO:<x@y", "TO:"), None);
        assert_eq!(parse_path("FROM:<x@y>", "TO:"), None);
    }
}
