//! Reading the environment into a [`Config`]: every variable, its default, and the
//! [`ConfigError`] naming it when its value cannot be used.

use std::{path::PathBuf, time::Duration};

use chrono_tz::Tz;

use super::{
    Config, ConfigError, DEFAULT_DATABASE_URL, HttpServer, PushConfig, RateLimits, SmsConfig, SmtpConfig,
    parse::*,
    settings::{DEFAULT_SMS_MAX_SEGMENTS, DEFAULT_WORKER_BATCH_SIZE, DEFAULT_WORKER_CONCURRENCY},
};

impl Config {
    /// Reads and validates the environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let database_url = var("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        crate::db::validate_url(&database_url).map_err(|m| ConfigError::new("DATABASE_URL", m))?;
        let database_pooler = match var("DATABASE_POOLER") {
            None => crate::db::Pooler::Session,
            Some(v) => crate::db::Pooler::parse(&v).map_err(|m| ConfigError::new("DATABASE_POOLER", m))?,
        };
        let database_direct_url = var("DATABASE_DIRECT_URL");
        if let Some(direct) = &database_direct_url {
            crate::db::validate_url(direct).map_err(|m| ConfigError::new("DATABASE_DIRECT_URL", m))?;
            if database_pooler != crate::db::Pooler::Transaction {
                return Err(ConfigError::new(
                    "DATABASE_DIRECT_URL",
                    "only used with DATABASE_POOLER=transaction (DATABASE_URL is already a direct connection); unset it, or set DATABASE_POOLER=transaction",
                ));
            }
        }
        let database_max_connections = match var("DATABASE_MAX_CONNECTIONS") {
            None => None,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if (2..=10_000).contains(&n) => Some(n),
                _ => {
                    return Err(ConfigError::new(
                        "DATABASE_MAX_CONNECTIONS",
                        format!("expected an integer between 2 and 10000 (connections per process), got {v:?}"),
                    ));
                }
            },
        };

        let tz_name = var("SCHOOL_TIMEZONE").unwrap_or_else(|| "Europe/London".into());
        let school_timezone: Tz = tz_name.parse().map_err(|_| {
            ConfigError::new(
                "SCHOOL_TIMEZONE",
                format!("expected an IANA time zone such as Europe/London, got {tz_name:?}"),
            )
        })?;
        // What a stored zone that does not parse is read as (`validate::stored_timezone`).
        crate::validate::set_school_timezone(school_timezone);

        let smtp = match var("SMTP_URL") {
            None => None,
            Some(url) => {
                let parsed = url::Url::parse(&url).map_err(|e| {
                    ConfigError::new(
                        "SMTP_URL",
                        format!("expected smtp://user:pass@host:port?tls=required, could not parse it: {e}"),
                    )
                })?;
                if !matches!(parsed.scheme(), "smtp" | "smtps") || parsed.host_str().is_none() {
                    return Err(ConfigError::new("SMTP_URL", "expected smtp:// or smtps:// with a host"));
                }
                check_smtp_tls(&parsed)?;
                Some(SmtpConfig { url })
            }
        };

        let mail_from = var("MAIL_FROM").unwrap_or_else(|| "Dashlight <no-reply@localhost>".into());
        if !mail_from.contains('@') {
            return Err(ConfigError::new(
                "MAIL_FROM",
                format!("expected an address such as `Name <addr@host>`, got {mail_from:?}"),
            ));
        }

        let mail_bounce_domain = match var("MAIL_BOUNCE_DOMAIN") {
            None => domain_of(&mail_from).ok_or_else(|| {
                ConfigError::new(
                    "MAIL_FROM",
                    format!("expected an address with a domain such as `Name <addr@host>` (or set MAIL_BOUNCE_DOMAIN), got {mail_from:?}"),
                )
            })?,
            Some(v) => {
                let d = v.trim().to_ascii_lowercase();
                if !valid_domain(&d) {
                    return Err(ConfigError::new(
                        "MAIL_BOUNCE_DOMAIN",
                        format!("expected a mail domain such as bounces.school.example, got {v:?}"),
                    ));
                }
                d
            }
        };
        let inbound_email_token = var("INBOUND_EMAIL_TOKEN").map(|t| t.trim().to_owned());
        if let Some(t) = &inbound_email_token {
            check_secret_token("INBOUND_EMAIL_TOKEN", t)?;
        }

        let sms_max_segments = parsed("SMS_MAX_SEGMENTS", DEFAULT_SMS_MAX_SEGMENTS, "a number of segments")?;
        if !(1..=10).contains(&sms_max_segments) {
            return Err(ConfigError::new("SMS_MAX_SEGMENTS", "expected an integer between 1 and 10"));
        }
        let sms = match (var("SMS_ACCOUNT_SID"), var("SMS_AUTH_TOKEN"), var("SMS_FROM")) {
            (None, None, None) => None,
            (Some(account_sid), Some(auth_token), Some(from)) => {
                let api_base_url = var("SMS_API_BASE_URL").unwrap_or_else(|| "https://api.twilio.com".into());
                url::Url::parse(&api_base_url)
                    .map_err(|e| ConfigError::new("SMS_API_BASE_URL", format!("expected an http(s) URL: {e}")))?;
                Some(SmsConfig {
                    api_base_url: api_base_url.trim_end_matches('/').to_owned(),
                    account_sid,
                    auth_token,
                    from,
                    max_segments: sms_max_segments,
                })
            }
            (sid, token, from) => {
                let missing = [
                    ("SMS_ACCOUNT_SID", sid.is_none()),
                    ("SMS_AUTH_TOKEN", token.is_none()),
                    ("SMS_FROM", from.is_none()),
                ]
                .into_iter()
                .find(|(_, m)| *m)
                .map(|(n, _)| n)
                .unwrap_or("SMS_FROM");
                return Err(ConfigError::new(
                    missing,
                    "SMS needs SMS_ACCOUNT_SID, SMS_AUTH_TOKEN and SMS_FROM together (or none of them)",
                ));
            }
        };

        let push = match var("VAPID_PRIVATE_KEY") {
            None => None,
            Some(key) => {
                use base64::Engine as _;
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(key.trim().trim_end_matches('='))
                    .map_err(|_| ConfigError::new("VAPID_PRIVATE_KEY", "expected a base64url raw P-256 private key (32 bytes)"))?;
                if raw.len() != 32 {
                    return Err(ConfigError::new(
                        "VAPID_PRIVATE_KEY",
                        format!("expected 32 bytes, got {}", raw.len()),
                    ));
                }
                let vapid_subject = var("VAPID_SUBJECT").unwrap_or_else(|| "mailto:admin@localhost".into());
                if !(vapid_subject.starts_with("mailto:") || vapid_subject.starts_with("https:")) {
                    return Err(ConfigError::new("VAPID_SUBJECT", "expected a mailto: or https: contact"));
                }
                Some(PushConfig {
                    vapid_private_key: key.trim().to_owned(),
                    vapid_subject,
                })
            }
        };

        let admin_api_addr = var("ADMIN_API_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into());
        admin_api_addr.parse::<std::net::SocketAddr>().map_err(|_| {
            ConfigError::new(
                "ADMIN_API_ADDR",
                format!("expected host:port such as 127.0.0.1:8080, got {admin_api_addr:?}"),
            )
        })?;

        let worker_metrics_addr = match var("WORKER_METRICS_ADDR") {
            None => None,
            Some(v) => Some(v.parse::<std::net::SocketAddr>().map_err(|_| {
                ConfigError::new(
                    "WORKER_METRICS_ADDR",
                    format!("expected host:port such as 127.0.0.1:9464, got {v:?}"),
                )
            })?),
        };

        let reminder_offsets = match var("REMINDER_OFFSETS") {
            None => vec![Duration::from_secs(86_400), Duration::from_secs(7_200)],
            Some(v) => {
                let mut out = Vec::new();
                for part in v.split(',') {
                    let d = parse_duration(part).filter(|d| !d.is_zero()).ok_or_else(|| {
                        ConfigError::new(
                            "REMINDER_OFFSETS",
                            format!("expected a comma-separated list such as 24h,2h; {part:?} is not a duration"),
                        )
                    })?;
                    out.push(d);
                }
                out.sort_unstable_by(|a, b| b.cmp(a));
                out.dedup();
                out
            }
        };

        let worker_concurrency = parsed("WORKER_CONCURRENCY", DEFAULT_WORKER_CONCURRENCY, "a positive integer")?;
        if worker_concurrency == 0 || worker_concurrency > 4096 {
            return Err(ConfigError::new("WORKER_CONCURRENCY", "expected an integer between 1 and 4096"));
        }
        let worker_batch_size = parsed("WORKER_BATCH_SIZE", DEFAULT_WORKER_BATCH_SIZE, "a positive integer")?;
        if worker_batch_size == 0 || worker_batch_size > 5000 {
            return Err(ConfigError::new("WORKER_BATCH_SIZE", "expected an integer between 1 and 5000"));
        }
        let admin_api_token = var("ADMIN_API_TOKEN");
        if let Some(t) = &admin_api_token {
            check_admin_token(t)?;
        }
        let auth_failure_limit = parsed("AUTH_FAILURE_LIMIT", 10u32, "a positive integer")?;
        if auth_failure_limit == 0 {
            return Err(ConfigError::new("AUTH_FAILURE_LIMIT", "expected at least 1"));
        }
        let delivery_max_attempts = parsed("DELIVERY_MAX_ATTEMPTS", 8u32, "a positive integer")?;
        if delivery_max_attempts == 0 {
            return Err(ConfigError::new("DELIVERY_MAX_ATTEMPTS", "expected at least 1"));
        }

        let public_base_url = match var("PUBLIC_BASE_URL") {
            None => format!("http://{admin_api_addr}"),
            Some(v) => {
                let parsed = url::Url::parse(v.trim()).map_err(|e| {
                    ConfigError::new(
                        "PUBLIC_BASE_URL",
                        format!("expected an http(s) URL such as https://school.example, got {v:?}: {e}"),
                    )
                })?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() || parsed.query().is_some() {
                    return Err(ConfigError::new(
                        "PUBLIC_BASE_URL",
                        format!("expected an http(s) URL with a host and no query, such as https://school.example, got {v:?}"),
                    ));
                }
                v.trim().trim_end_matches('/').to_owned()
            }
        };
        let gap_fill_max_offers = parsed("GAP_FILL_MAX_OFFERS", 5u32, "a number of students (0 turns gap filling off)")?;
        if gap_fill_max_offers > 1000 {
            return Err(ConfigError::new("GAP_FILL_MAX_OFFERS", "expected at most 1000"));
        }

        let defaults = HttpServer::default();
        let max_connections = parsed("HTTP_MAX_CONNECTIONS", defaults.max_connections, "a number of connections")?;
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(ConfigError::new(
                "HTTP_MAX_CONNECTIONS",
                "expected an integer between 1 and 1000000",
            ));
        }
        let positive = |name: &'static str, d: Duration| -> Result<Duration, ConfigError> {
            let d = duration(name, d)?;
            if d.is_zero() {
                return Err(ConfigError::new(name, "expected a duration above zero, such as 10s"));
            }
            Ok(d)
        };
        let http_server = HttpServer {
            header_read_timeout: positive("HTTP_HEADER_READ_TIMEOUT", defaults.header_read_timeout)?,
            idle_timeout: positive("HTTP_IDLE_TIMEOUT", defaults.idle_timeout)?,
            max_connections,
            trusted_proxies: match var("TRUSTED_PROXIES") {
                None => Vec::new(),
                Some(v) => parse_trusted_proxies(&v).map_err(|m| ConfigError::new("TRUSTED_PROXIES", m))?,
            },
        };

        Ok(Config {
            http_server,
            public_base_url,
            gap_fill_min_notice: duration("GAP_FILL_MIN_NOTICE", Duration::from_secs(3 * 3600))?,
            gap_fill_max_offers,
            database_url,
            database_pooler,
            database_direct_url,
            database_max_connections,
            school_timezone,
            school_name: var("SCHOOL_NAME").unwrap_or_else(|| "Dashlight Driving School".into()),
            smtp,
            mail_from,
            mail_bounce_domain,
            inbound_email_token,
            sms,
            push,
            admin_api_addr,
            worker_metrics_addr,
            admin_api_token,
            outbox_dir: var("OUTBOX_DIR").unwrap_or_else(|| "./outbox".into()).into(),
            invoice_dir: var("INVOICE_DIR").unwrap_or_else(|| "./invoices".into()).into(),
            attachments_dir: var("ATTACHMENTS_DIR").unwrap_or_else(|| "./attachments".into()).into(),
            retention_deliveries: retention_deliveries()?,
            retention_invoices: retention_invoices()?,
            templates_dir: var("TEMPLATES_DIR").map(PathBuf::from),
            reminder_offsets,
            confirm_nudge_before: escalation("CONFIRM_NUDGE_BEFORE", Duration::from_secs(12 * 3600))?,
            confirm_alert_before: escalation("CONFIRM_ALERT_BEFORE", Duration::from_secs(3 * 3600))?,
            worker_concurrency,
            worker_batch_size,
            delivery_max_attempts,
            retry_base_delay: duration("RETRY_BASE_DELAY", Duration::from_secs(5))?,
            retry_max_delay: duration("RETRY_MAX_DELAY", Duration::from_secs(3600))?,
            poll_interval: duration("POLL_INTERVAL", Duration::from_millis(250))?,
            recurring_horizon_days: parsed("RECURRING_HORIZON_DAYS", 28u32, "a number of days")?,
            push_allow_private_endpoints: boolean("PUSH_ALLOW_PRIVATE_ENDPOINTS", false)?,
            auth_failure_limit,
            rate_limits: RateLimits {
                email: rate_limit("EMAIL_RATE_LIMIT")?,
                sms: rate_limit("SMS_RATE_LIMIT")?,
                push: rate_limit("PUSH_RATE_LIMIT")?,
            },
        })
    }
}
