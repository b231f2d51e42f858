//! Debian's Postfix (`/usr/sbin/postfix`) on loopback, in a folder of its own (its own
//! configuration directory, queue and log, started with `postfix -c DIR start`), so the machine's
//! mail system, if any, is never touched. Needs root, as Postfix does.
//!
//! The set-up for bounces is not written here: [`Recipe::from_docs`] reads it from
//! `docs/operating.md` (its "Postfix" section: the token file's commands, the `main.cf` and
//! `master.cf` lines and the transport map) and changes only the school's example addresses and
//! the files' folders. What this module adds is what any test MTA needs and the recipe leaves to
//! the host: where the queue is, the loopback listener, a local domain whose unknown users bounce.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The bounce domain the recipe's examples use (`$MAIL_BOUNCE_DOMAIN`).
pub const BOUNCE_DOMAIN: &str = "bounces.school.example";
/// The local domain of the test MTA: mail to an unknown user there is bounced with a DSN.
pub const LOCAL_DOMAIN: &str = "mta.dashlight.test";
/// The address the recipe's examples use for `PUBLIC_BASE_URL`.
const EXAMPLE_BASE_URL: &str = "https://school.example";

/// The four blocks of the docs' Postfix recipe, as written there.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The shell commands that write the token file.
    pub token_file: String,
    /// The lines to add to `main.cf`.
    pub main_cf: String,
    /// The lines to add to `master.cf`.
    pub master_cf: String,
    /// The transport map.
    pub transport: String,
}

impl Recipe {
    /// Reads the recipe from `docs/operating.md`: the fenced blocks of its "Postfix" section,
    /// each known by its first line (`# /etc/dashlight/inbound-auth...`, `# /etc/postfix/main.cf...`,
    /// `# /etc/postfix/master.cf...`, `# /etc/postfix/transport`).
    pub fn from_docs() -> anyhow::Result<Recipe> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operating.md");
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let start = text
            .find("\n## Postfix")
            .context("docs/operating.md has no \"## Postfix\" section")?;
        let section = &text[start + 1..];
        let section = match section[3..].find("\n## ") {
            Some(end) => &section[..end + 3],
            None => section,
        };
        let mut blocks = Vec::new();
        let mut lines = section.lines();
        while let Some(line) = lines.next() {
            if line.trim_start().starts_with("```") {
                let mut block = String::new();
                for inner in lines.by_ref() {
                    if inner.trim_start().starts_with("```") {
                        break;
                    }
                    block.push_str(inner);
                    block.push('\n');
                }
                blocks.push(block);
            }
        }
        let find = |head: &str| -> anyhow::Result<String> {
            let found: Vec<&String> = blocks.iter().filter(|b| b.starts_with(head)).collect();
            match found.as_slice() {
                [one] => Ok((*one).clone()),
                _ => bail!("docs/operating.md's Postfix section needs exactly one block starting with {head:?}"),
            }
        };
        Ok(Recipe {
            token_file: find("# /etc/dashlight/inbound-auth")?,
            main_cf: find("# /etc/postfix/main.cf")?,
            master_cf: find("# /etc/postfix/master.cf")?,
            transport: find("# /etc/postfix/transport")?,
        })
    }
}

/// A running Postfix of its own; stopped (and its folder removed) on drop.
pub struct Postfix {
    dir: PathBuf,
    /// Its configuration directory (`postfix -c`).
    pub config_dir: PathBuf,
    /// Where it listens for SMTP: `127.0.0.1:PORT`.
    pub smtp_addr: String,
    running: bool,
}

/// Whether Postfix can run here: installed, and we are root.
pub fn available() -> Result<(), String> {
    if !Path::new("/usr/sbin/postfix").exists() {
        return Err("Debian's postfix is not installed (/usr/sbin/postfix): .ci/run installs it".into());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        return Err("postfix needs root to start".into());
    }
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Postfix {
    /// Writes the configuration (the test MTA's own lines, then the recipe's, the recipe's
    /// `/etc/postfix`, `/etc/dashlight` and `https://school.example` replaced by this Postfix's
    /// folders and `public_base_url`), runs the recipe's token-file commands with
    /// `INBOUND_EMAIL_TOKEN` set, builds the transport map and starts Postfix.
    pub fn start(name: &str, recipe: &Recipe, public_base_url: &str, inbound_token: &str) -> anyhow::Result<Postfix> {
        let dir = std::env::temp_dir().join(format!("dashlight-postfix-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let config_dir = dir.join("postfix");
        // Removes the folder again if anything below fails.
        let mut postfix = Postfix {
            dir: dir.clone(),
            config_dir: config_dir.clone(),
            smtp_addr: String::new(),
            running: false,
        };
        let etc = dir.join("dashlight");
        let (queue, data) = (dir.join("queue"), dir.join("data"));
        for d in [&config_dir, &queue, &data] {
            std::fs::create_dir_all(d)?;
        }
        // pipe(8) runs curl as nobody: every folder on the way to the token file must be
        // searchable by it, as /etc is.
        run(Command::new("chmod").arg("0755").arg(&dir))?;
        run(Command::new("chown").arg("postfix").arg(&data))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let local = |s: &str| {
            s.replace("/etc/postfix", &config_dir.display().to_string())
                .replace("/etc/dashlight", &etc.display().to_string())
                .replace(EXAMPLE_BASE_URL, public_base_url.trim_end_matches('/'))
        };

        let d = dir.display();
        let main_cf = format!(
            "# The test MTA's own settings (not part of the recipe).
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = {LOCAL_DOMAIN}
mydomain = dashlight.test
myorigin = $myhostname
mydestination = $myhostname, localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# Accept any local user at SMTP time, so an unknown one bounces with a DSN afterwards.
local_recipient_maps =
alias_maps =
alias_database =
biff = no
smtputf8_enable = no
maillog_file_prefixes = {d}
maillog_file = {d}/maillog
syslog_name = postfix-dashlight-test

{}",
            local(&recipe.main_cf)
        );
        let master_cf = format!(
            "# The test MTA's own services (not part of the recipe), none chrooted.
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd

{}",
            local(&recipe.master_cf)
        );
        std::fs::write(config_dir.join("main.cf"), main_cf)?;
        std::fs::write(config_dir.join("master.cf"), master_cf)?;
        std::fs::write(config_dir.join("transport"), local(&recipe.transport))?;
        run(Command::new("bash")
            .arg("-euc")
            .arg(local(&recipe.token_file))
            .env("INBOUND_EMAIL_TOKEN", inbound_token))
        .context("the recipe's token-file commands")?;
        run(Command::new("/usr/sbin/postmap")
            .arg("-c")
            .arg(&config_dir)
            .arg(format!("hash:{}/transport", config_dir.display())))?;
        run(Command::new("/usr/sbin/postfix").arg("-c").arg(&config_dir).arg("check"))?;
        postfix.smtp_addr = format!("127.0.0.1:{port}");
        run(Command::new("/usr/sbin/postfix").arg("-c").arg(&postfix.config_dir).arg("start"))
            .with_context(|| format!("postfix start; its log:\n{}", postfix.log()))?;
        postfix.running = true;
        Ok(postfix)
    }

    /// The token file the recipe wrote.
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("dashlight/inbound-auth")
    }

    /// What Postfix logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.running {
            let _ = Command::new("/usr/sbin/postfix")
                .arg("-c")
                .arg(&self.config_dir)
                .arg("stop")
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
