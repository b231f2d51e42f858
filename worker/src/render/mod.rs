//! Template rendering for the notification pipeline.
//!
//! The templates of `templates/` at the workspace's root are compiled into the
//! binary ([`Renderer::builtin`]), so the worker runs from any folder.
//! `TEMPLATES_DIR` names a school's own copy instead ([`Renderer::load`]): a
//! complete folder of the same shape, checked at start-up like the built-in
//! set, so a broken or missing file stops the worker naming that file.
//!
//! Every notification kind (`dashlight_core::kinds::Kind`) has a folder under the
//! templates directory holding one Handlebars file per message part:
//!
//! | part | file |
//! |---|---|
//! | [`Part::Subject`] | `subject.hbs` (email subject, one line) |
//! | [`Part::EmailHtml`] | `email.html.hbs` |
//! | [`Part::EmailText`] | `email.txt.hbs` |
//! | [`Part::Sms`] | `sms.hbs` (kept within two GSM-7 segments) |
//! | [`Part::PushTitle`] | `push_title.hbs` |
//! | [`Part::PushBody`] | `push_body.hbs` |
//!
//! Files directly under the templates directory whose names start with `_`
//! are partials: `_layout.html.hbs` becomes the partial `layout` for HTML
//! templates, `_name.txt.hbs` a partial `name` for the plain-text parts.
//!
//! Rendering is strict: a template that names a field the context lacks fails
//! instead of printing nothing. [`Renderer::load`] compiles everything and
//! renders each template with [`Renderer::sample_context`] (and a sparse
//! variant with every nullable field null), so a typo fails at start-up, not
//! when the first student books a lesson. Only the HTML part is HTML-escaped;
//! subject, text, SMS and push parts are rendered verbatim.
//!
//! Helpers available to every template:
//!
//! - `{{datetime t tz}}` → `Tuesday 3 March, 17:30` (`t` RFC 3339, `tz` IANA name)
//! - `{{date t tz}}` → `Tuesday 3 March` (`t` may also be a plain `YYYY-MM-DD`)
//! - `{{time t tz}}` → `17:30`
//! - `{{money minor currency}}` → `£45.00`, `€1,250.00`, `$9.99`, `45.00 CHF`
//! - `{{plural n "lesson"}}` → `1 lesson` / `3 lessons` (an optional third
//!   argument gives an irregular plural)
//! - the Handlebars built-ins (`if`, `unless`, `each`, `with`, `eq`, `gt`, …)
//!
//! Files: this one loads, checks and renders; `helpers.rs` holds the helpers above and the
//! conditionals; `samples.rs` the sample contexts the load-time check renders.

mod helpers;
mod samples;

use std::fmt;
use std::path::{Path, PathBuf};

use dashlight_core::kinds::Kind;
use handlebars::Handlebars;
use serde_json::Value;

use helpers::set_conditionals;
use samples::check_contexts;

/// A failure to load or render a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A template or partial file could not be read, compiled, or rendered
    /// with its sample context at start-up.
    #[error("template {}: {message}", .file.display())]
    Load {
        /// The offending file.
        file: PathBuf,
        /// What went wrong, with line and column where Handlebars gives them.
        message: String,
    },
    /// A template the renderer needs does not exist (at load time), or the
    /// kind has no templates at all (at render time).
    #[error("missing template for `{kind}`: {}", .file.display())]
    Missing {
        /// The notification kind.
        kind: String,
        /// The file that was expected.
        file: PathBuf,
    },
    /// Rendering failed with the given context (a missing field, a value a
    /// helper cannot format, …).
    #[error("cannot render {part} of `{kind}`: {message}")]
    Render {
        /// The notification kind.
        kind: String,
        /// The part being rendered.
        part: Part,
        /// What went wrong.
        message: String,
    },
}

/// One part of a notification, each backed by its own template file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The email subject line (`subject.hbs`).
    Subject,
    /// The HTML email body (`email.html.hbs`), HTML-escaped.
    EmailHtml,
    /// The plain-text email body (`email.txt.hbs`).
    EmailText,
    /// The SMS text (`sms.hbs`).
    Sms,
    /// The Web Push notification title (`push_title.hbs`).
    PushTitle,
    /// The Web Push notification body (`push_body.hbs`).
    PushBody,
}

impl Part {
    /// Every part, in file-listing order.
    pub const ALL: [Part; 6] = [
        Part::Subject,
        Part::EmailHtml,
        Part::EmailText,
        Part::Sms,
        Part::PushTitle,
        Part::PushBody,
    ];

    /// The template's file name inside the kind's folder.
    pub fn file_name(self) -> &'static str {
        match self {
            Part::Subject => "subject.hbs",
            Part::EmailHtml => "email.html.hbs",
            Part::EmailText => "email.txt.hbs",
            Part::Sms => "sms.hbs",
            Part::PushTitle => "push_title.hbs",
            Part::PushBody => "push_body.hbs",
        }
    }

    fn is_html(self) -> bool {
        self == Part::EmailHtml
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

/// The three parts of an email, rendered together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    /// The subject line, one line, trimmed.
    pub subject: String,
    /// The HTML body.
    pub html: String,
    /// The plain-text alternative body.
    pub text: String,
}

/// Compiled templates of every kind, ready to render. Cheap to share between
/// tasks (`Send + Sync`); rendering takes `&self`.
#[derive(Debug)]
pub struct Renderer {
    /// HTML part, with HTML escaping.
    html: Handlebars<'static>,
    /// Subject, text, SMS and push parts, without escaping.
    plain: Handlebars<'static>,
    /// Where the templates were loaded from, for error messages.
    dir: PathBuf,
}

/// The templates shipped with Dashlight (`templates/` at the workspace's root), compiled in.
#[derive(rust_embed::Embed)]
#[folder = "../templates/"]
struct Builtin;

/// Where template files are read from: the compiled-in set or a folder.
#[derive(Clone, Copy)]
enum Source<'a> {
    Builtin,
    Dir(&'a Path),
}

impl Source<'_> {
    /// How files of this source are named in errors: the folder, or `<built-in templates>`.
    fn root(&self) -> PathBuf {
        match self {
            Source::Builtin => PathBuf::from("<built-in templates>"),
            Source::Dir(dir) => dir.to_path_buf(),
        }
    }

    /// Reads one file, `rel` relative to the root (`lesson_reminder/sms.hbs`).
    fn read(&self, rel: &str) -> std::io::Result<String> {
        match self {
            Source::Builtin => {
                let file = Builtin::get(rel).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
                String::from_utf8(file.data.into_owned()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            }
            Source::Dir(dir) => std::fs::read_to_string(dir.join(rel)),
        }
    }

    /// The names of the files directly under the root, sorted.
    fn top_level_files(&self) -> std::io::Result<Vec<String>> {
        let mut names: Vec<String> = match self {
            Source::Builtin => Builtin::iter().filter(|p| !p.contains('/')).map(|p| p.into_owned()).collect(),
            Source::Dir(dir) => {
                let mut names = Vec::new();
                for entry in std::fs::read_dir(dir)? {
                    let entry = entry?;
                    if let Some(name) = entry.file_name().to_str() {
                        names.push(name.to_owned());
                    }
                }
                names
            }
        };
        names.sort();
        Ok(names)
    }
}

impl Renderer {
    /// The templates compiled into the binary, checked as [`Renderer::load`] checks a folder.
    pub fn builtin() -> Result<Renderer, TemplateError> {
        Self::load_from(Source::Builtin)
    }

    /// `TEMPLATES_DIR` when it is set, else the built-in templates.
    pub fn configured(dir: Option<&Path>) -> Result<Renderer, TemplateError> {
        match dir {
            Some(dir) => Self::load(dir),
            None => Self::builtin(),
        }
    }

    /// Loads and compiles every template under `dir`, failing with the file's
    /// name on a missing file or a syntax error. Also pre-renders each
    /// template once with a sample context of its kind (see
    /// [`Renderer::sample_context`]) and with variants taking the other
    /// branches (nullable fields null, lists empty, each `change` of a
    /// booking alert), so a template referencing an unknown field fails at
    /// start-up.
    pub fn load(dir: &Path) -> Result<Renderer, TemplateError> {
        Self::load_from(Source::Dir(dir))
    }

    fn load_from(source: Source<'_>) -> Result<Renderer, TemplateError> {
        let dir = &source.root();
        let mut html = new_registry(true);
        let mut plain = new_registry(false);

        register_partials(source, &mut html, &mut plain)?;

        for kind in Kind::ALL {
            for part in Part::ALL {
                let file = dir.join(kind.as_str()).join(part.file_name());
                let text = match source.read(&format!("{kind}/{}", part.file_name())) {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(TemplateError::Missing {
                            kind: kind.as_str().to_owned(),
                            file,
                        });
                    }
                    Err(e) => {
                        return Err(TemplateError::Load {
                            file,
                            message: e.to_string(),
                        });
                    }
                };
                let registry = if part.is_html() { &mut html } else { &mut plain };
                registry
                    .register_template_string(&template_name(kind, part), text)
                    .map_err(|e| TemplateError::Load {
                        file: file.clone(),
                        message: e.to_string(),
                    })?;
            }
        }

        // Check every template against the contract with strict `if`/`unless`
        // (a condition on an unknown field is an error too), then switch to the
        // forgiving ones so optional fields may be left out at run time.
        set_conditionals(&mut html, true);
        set_conditionals(&mut plain, true);
        let mut renderer = Renderer {
            html,
            plain,
            dir: dir.clone(),
        };
        for kind in Kind::ALL {
            let contexts = check_contexts(kind);
            for part in Part::ALL {
                for ctx in &contexts {
                    renderer.render(kind, part, ctx).map_err(|e| {
                        let message = match e {
                            TemplateError::Render { message, .. } => message,
                            other => other.to_string(),
                        };
                        TemplateError::Load {
                            file: dir.join(kind.as_str()).join(part.file_name()),
                            message: format!("fails with the sample context: {message}"),
                        }
                    })?;
                }
            }
        }
        set_conditionals(&mut renderer.html, false);
        set_conditionals(&mut renderer.plain, false);
        Ok(renderer)
    }

    /// Renders one part of a kind with `ctx`. Subject and push title come back
    /// as a single trimmed line; SMS, push body and the text email are trimmed
    /// (the text email ends with one newline); HTML is returned as rendered.
    pub fn render(&self, kind: Kind, part: Part, ctx: &Value) -> Result<String, TemplateError> {
        let name = template_name(kind, part);
        let registry = if part.is_html() { &self.html } else { &self.plain };
        if !registry.has_template(&name) {
            return Err(TemplateError::Missing {
                kind: kind.as_str().to_owned(),
                file: self.dir.join(kind.as_str()).join(part.file_name()),
            });
        }
        let out = registry.render(&name, ctx).map_err(|e| TemplateError::Render {
            kind: kind.as_str().to_owned(),
            part,
            message: e.to_string(),
        })?;
        Ok(match part {
            Part::Subject | Part::PushTitle => one_line(&out),
            Part::Sms | Part::PushBody => tidy(&out),
            Part::EmailText => {
                let mut text = tidy(&out);
                text.push('\n');
                text
            }
            Part::EmailHtml => out,
        })
    }

    /// Renders the subject, HTML body and text body of a kind in one go.
    pub fn render_email(&self, kind: Kind, ctx: &Value) -> Result<RenderedEmail, TemplateError> {
        Ok(RenderedEmail {
            subject: self.render(kind, Part::Subject, ctx)?,
            html: self.render(kind, Part::EmailHtml, ctx)?,
            text: self.render(kind, Part::EmailText, ctx)?,
        })
    }
}

fn template_name(kind: Kind, part: Part) -> String {
    format!("{kind}/{}", part.file_name())
}

fn new_registry(html: bool) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    if !html {
        hb.register_escape_fn(handlebars::no_escape);
    }
    helpers::register(&mut hb);
    hb
}

/// Registers the partials found directly under the root of `source`: `_name.html.hbs` for
/// HTML, `_name.txt.hbs` for the plain parts, `_name.hbs` for both.
fn register_partials(source: Source<'_>, html: &mut Handlebars<'static>, plain: &mut Handlebars<'static>) -> Result<(), TemplateError> {
    let root = source.root();
    let names = source.top_level_files().map_err(|e| TemplateError::Load {
        file: root.clone(),
        message: format!("cannot read the templates directory: {e}"),
    })?;
    for name in names {
        let file = root.join(&name);
        let Some(stem) = name.strip_prefix('_') else {
            continue;
        };
        let (partial, for_html, for_plain) = if let Some(p) = stem.strip_suffix(".html.hbs") {
            (p, true, false)
        } else if let Some(p) = stem.strip_suffix(".txt.hbs") {
            (p, false, true)
        } else if let Some(p) = stem.strip_suffix(".hbs") {
            (p, true, true)
        } else {
            continue;
        };
        let partial = partial.to_owned();
        let text = source.read(&name).map_err(|e| TemplateError::Load {
            file: file.clone(),
            message: e.to_string(),
        })?;
        for (wanted, registry) in [(for_html, &mut *html), (for_plain, &mut *plain)] {
            if wanted {
                registry
                    .register_partial(&partial, text.as_str())
                    .map_err(|e| TemplateError::Load {
                        file: file.clone(),
                        message: e.to_string(),
                    })?;
            }
        }
    }
    Ok(())
}

/// Collapses all whitespace into single spaces: for one-line parts.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Trims the text, strips trailing spaces from lines and keeps at most one
/// blank line in a row.
fn tidy(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank_run = 0;
    for line in s.trim().lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use serde_json::json;

    use super::*;

    fn templates_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates")
    }

    fn renderer() -> Renderer {
        Renderer::load(&templates_dir()).expect("shipped templates load")
    }

    /// Renders an inline template with the plain (unescaped) registry.
    fn inline(template: &str, ctx: &Value) -> Result<String, String> {
        new_registry(false).render_template(template, ctx).map_err(|e| e.to_string())
    }

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn with_real_templates(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("dashlight-render-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            copy_dir(&templates_dir(), &dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    // --- helpers -----------------------------------------------------------

    #[test]
    fn datetime_date_time_helpers() {
        let ctx = json!({ "t": "2026-03-03T17:30:00Z", "tz": "Europe/London" });
        assert_eq!(inline("{{datetime t tz}}", &ctx).unwrap(), "Tuesday 3 March, 17:30");
        assert_eq!(inline("{{date t tz}}", &ctx).unwrap(), "Tuesday 3 March");
        assert_eq!(inline("{{time t tz}}", &ctx).unwrap(), "17:30");
        // Offsets in the input are honoured, and the zone decides the day.
        let ctx = json!({ "t": "2026-03-03T23:30:00-05:00", "tz": "Europe/Paris" });
        assert_eq!(inline("{{datetime t tz}}", &ctx).unwrap(), "Wednesday 4 March, 05:30");
        // A bare calendar date is printed as that date.
        let ctx = json!({ "t": "2026-07-14", "tz": "Pacific/Auckland" });
        assert_eq!(inline("{{date t tz}}", &ctx).unwrap(), "Tuesday 14 July");
    }

    #[test]
    fn time_helpers_follow_daylight_saving() {
        let at = |t: &str| inline("{{datetime t tz}}", &json!({ "t": t, "tz": "Europe/London" })).unwrap();
        // 29 March 2026: clocks go forward at 01:00 GMT.
        assert_eq!(at("2026-03-29T00:30:00Z"), "Sunday 29 March, 00:30");
        assert_eq!(at("2026-03-29T01:30:00Z"), "Sunday 29 March, 02:30");
        assert_eq!(at("2026-03-28T17:30:00Z"), "Saturday 28 March, 17:30");
        assert_eq!(at("2026-03-30T16:30:00Z"), "Monday 30 March, 17:30");
        // 25 October 2026: clocks go back at 01:00 GMT (02:00 BST).
        assert_eq!(at("2026-10-25T00:30:00Z"), "Sunday 25 October, 01:30");
        assert_eq!(at("2026-10-25T01:30:00Z"), "Sunday 25 October, 01:30");
        assert_eq!(at("2026-10-24T16:30:00Z"), "Saturday 24 October, 17:30");
        assert_eq!(at("2026-10-26T17:30:00Z"), "Monday 26 October, 17:30");
        let time = |t: &str| inline("{{time t tz}}", &json!({ "t": t, "tz": "Europe/London" }));
        assert_eq!(time("2026-03-29T09:00:00Z").unwrap(), "10:00");
        assert_eq!(time("2026-10-25T09:00:00Z").unwrap(), "09:00");
        let date = |t: &str| inline("{{date t tz}}", &json!({ "t": t, "tz": "Europe/London" }));
        // 23:30 UTC on the 24th is already the 25th in BST.
        assert_eq!(date("2026-10-24T23:30:00Z").unwrap(), "Sunday 25 October");
    }

    #[test]
    fn time_helpers_reject_bad_input() {
        let err = inline("{{datetime t tz}}", &json!({ "t": "3 March", "tz": "Europe/London" })).unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
        let err = inline("{{time t tz}}", &json!({ "t": "2026-03-03T17:30:00Z", "tz": "Europe/Leeds" })).unwrap_err();
        assert!(err.contains("Europe/Leeds"), "{err}");
        let err = inline("{{date t zone}}", &json!({ "t": "2026-03-03T17:30:00Z" })).unwrap_err();
        assert!(err.contains("zone"), "{err}");
    }

    #[test]
    fn money_helper_formats_currencies() {
        let money = |minor: Value, currency: &str| inline("{{money m c}}", &json!({ "m": minor, "c": currency }));
        assert_eq!(money(json!(4500), "GBP").unwrap(), "£45.00");
        assert_eq!(money(json!(4505), "EUR").unwrap(), "€45.05");
        assert_eq!(money(json!(999), "USD").unwrap(), "$9.99");
        assert_eq!(money(json!(4500), "CHF").unwrap(), "45.00 CHF");
        assert_eq!(money(json!(7), "GBP").unwrap(), "£0.07");
        assert_eq!(money(json!(0), "GBP").unwrap(), "£0.00");
        assert_eq!(money(json!(125000), "GBP").unwrap(), "£1,250.00");
        assert_eq!(money(json!(123456789), "GBP").unwrap(), "£1,234,567.89");
        assert_eq!(money(json!(-2550), "GBP").unwrap(), "-£25.50");
        assert_eq!(money(json!("4500"), "gbp").unwrap(), "£45.00");
        assert!(money(json!(45.5), "GBP").is_err());
        assert!(money(json!(4500), "pounds").is_err());
        assert_eq!(inline("{{money 4500 \"GBP\"}}", &json!({})).unwrap(), "£45.00");
    }

    #[test]
    fn plural_helper_counts() {
        let p = |n: i64| inline("{{plural n \"lesson\"}}", &json!({ "n": n })).unwrap();
        assert_eq!(p(0), "0 lessons");
        assert_eq!(p(1), "1 lesson");
        assert_eq!(p(12), "12 lessons");
        assert_eq!(
            inline("{{plural n \"person\" \"people\"}}", &json!({ "n": 2 })).unwrap(),
            "2 people"
        );
    }

    #[test]
    fn helpers_escape_in_html_only() {
        let html = new_registry(true);
        let ctx = json!({ "m": 100, "c": "GBP", "name": "Tom & Jerry" });
        assert_eq!(
            html.render_template("{{name}} {{money m c}}", &ctx).unwrap(),
            "Tom &amp; Jerry £1.00"
        );
        assert_eq!(inline("{{name}} {{money m c}}", &ctx).unwrap(), "Tom & Jerry £1.00");
    }

    #[test]
    fn strict_mode_rejects_unknown_fields() {
        assert!(inline("{{nope}}", &json!({})).is_err());
        assert!(inline("{{datetime nope \"Europe/London\"}}", &json!({})).is_err());
        // At run time an `if` on an absent optional field is simply false.
        assert_eq!(inline("{{#if previous}}x{{else}}y{{/if}}", &json!({})).unwrap(), "y");
    }

    // --- shipped templates -------------------------------------------------

    #[test]
    fn kinds_match_product_list() {
        // Every kind of dashlight_core::kinds has its templates folder, and nothing else does.
        let mut folders: Vec<String> = Builtin::iter()
            .filter_map(|p| p.split_once('/').map(|(dir, _)| dir.to_owned()))
            .collect();
        let mut core: Vec<String> = Kind::ALL.iter().map(|k| k.as_str().to_owned()).collect();
        folders.sort_unstable();
        folders.dedup();
        core.sort_unstable();
        assert_eq!(folders, core);
    }

    #[test]
    fn shipped_templates_render_every_kind_and_part() {
        let r = renderer();
        for kind in Kind::ALL {
            for ctx in check_contexts(kind) {
                for part in Part::ALL {
                    let out = r.render(kind, part, &ctx).unwrap_or_else(|e| panic!("{kind} {part}: {e}"));
                    assert!(!out.trim().is_empty(), "{kind} {part} is empty");
                    if matches!(part, Part::Subject | Part::PushTitle) {
                        assert!(!out.contains('\n'), "{kind} {part}: {out:?}");
                    }
                    if part == Part::EmailHtml {
                        assert!(out.contains("<html"), "{kind}: no layout");
                        assert!(out.contains("Greenway Driving School"), "{kind}");
                    } else {
                        assert!(!out.contains("{{"), "{kind} {part}: {out}");
                    }
                }
                let email = r.render_email(kind, &ctx).unwrap();
                assert!(email.text.ends_with('\n'));
            }
        }
    }

    #[test]
    fn built_in_templates_are_the_shipped_folder() {
        let (built_in, folder) = (Renderer::builtin().expect("built-in templates load"), renderer());
        for kind in Kind::ALL {
            let ctx = Renderer::sample_context(kind);
            for part in Part::ALL {
                assert_eq!(
                    built_in.render(kind, part, &ctx).unwrap(),
                    folder.render(kind, part, &ctx).unwrap(),
                    "{kind} {part}"
                );
            }
        }
        let mut files: Vec<String> = Builtin::iter().map(|p| p.into_owned()).collect();
        files.sort();
        assert!(
            files.contains(&"_layout.html.hbs".to_owned()) && files.contains(&"lesson_reminder/sms.hbs".to_owned()),
            "{files:?}"
        );
    }

    #[test]
    fn sample_renders_read_well() {
        let r = renderer();
        let ctx = Renderer::sample_context(Kind::BookingConfirmed);
        let text = r.render(Kind::BookingConfirmed, Part::EmailText, &ctx);
        let text = text.unwrap();
        assert!(text.contains("Tuesday 3 March, 17:30"), "{text}");
        assert!(text.contains("Leeds station"), "{text}");
        let ctx = Renderer::sample_context(Kind::InvoiceIssued);
        let email = r.render_email(Kind::InvoiceIssued, &ctx).unwrap();
        assert!(email.html.contains("£45.00"), "{}", email.html);
        assert!(email.subject.contains("INV-2026-0042"), "{}", email.subject);
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let r = renderer();
        let mut ctx = Renderer::sample_context(Kind::BookingConfirmed);
        ctx["recipient"]["first_name"] = json!("<script>alert(1)</script>");
        let email = r.render_email(Kind::BookingConfirmed, &ctx).unwrap();
        assert!(!email.html.contains("<script>"), "{}", email.html);
        assert!(email.html.contains("&lt;script&gt;"), "{}", email.html);
        assert!(email.text.contains("<script>alert(1)</script>"), "{}", email.text);
        let sms = r.render(Kind::BookingConfirmed, Part::Sms, &ctx).unwrap();
        assert!(sms.contains("<script>"), "{sms}");
    }

    #[test]
    fn optional_previous_may_be_absent_at_run_time() {
        let r = renderer();
        let mut ctx = Renderer::sample_context(Kind::BookingAlert);
        ctx["change"] = json!("new");
        ctx.as_object_mut().unwrap().remove("previous");
        for part in Part::ALL {
            r.render(Kind::BookingAlert, part, &ctx).unwrap();
        }
    }

    #[test]
    fn render_errors_name_kind_and_part() {
        let r = renderer();
        let mut ctx = Renderer::sample_context(Kind::BookingConfirmed);
        ctx.as_object_mut().unwrap().remove("booking");
        let err = r.render(Kind::BookingConfirmed, Part::EmailText, &ctx).unwrap_err();
        assert!(matches!(err, TemplateError::Render { part: Part::EmailText, .. }));
        let msg = err.to_string();
        assert!(msg.contains("booking_confirmed") && msg.contains("email.txt.hbs"), "{msg}");
    }

    #[test]
    fn renderer_is_shareable() {
        fn check<T: Send + Sync>() {}
        check::<Renderer>();
    }

    // --- load failures -----------------------------------------------------

    #[test]
    fn broken_template_fails_naming_the_file() {
        let tmp = TempDir::with_real_templates("broken");
        let file = tmp.0.join("lesson_reminder").join("sms.hbs");
        std::fs::write(&file, "Hi {{#if recipient.first_name}}{{recipient.first_name}}\n").unwrap();
        let err = Renderer::load(&tmp.0).unwrap_err();
        assert!(matches!(err, TemplateError::Load { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&file.display().to_string()), "{msg}");
    }

    #[test]
    fn broken_partial_fails_naming_the_file() {
        let tmp = TempDir::with_real_templates("broken-partial");
        let file = tmp.0.join("_layout.html.hbs");
        std::fs::write(&file, "<html>{{#each}}").unwrap();
        let msg = Renderer::load(&tmp.0).unwrap_err().to_string();
        assert!(msg.contains(&file.display().to_string()), "{msg}");
    }

    #[test]
    fn missing_file_fails_naming_it() {
        let tmp = TempDir::with_real_templates("missing");
        let file = tmp.0.join("package_low").join("push_title.hbs");
        std::fs::remove_file(&file).unwrap();
        let err = Renderer::load(&tmp.0).unwrap_err();
        assert!(
            matches!(&err, TemplateError::Missing { kind, .. } if kind == "package_low"),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&file.display().to_string()), "{msg}");
    }

    #[test]
    fn missing_directory_fails_naming_it() {
        let dir = std::env::temp_dir().join("dashlight-render-does-not-exist");
        let msg = Renderer::load(&dir).unwrap_err().to_string();
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
    }

    #[test]
    fn unknown_field_fails_at_load() {
        let tmp = TempDir::with_real_templates("unknown-field");
        let file = tmp.0.join("booking_confirmed").join("email.txt.hbs");
        std::fs::write(&file, "Your car: {{booking.car_colour}}\n").unwrap();
        let err = Renderer::load(&tmp.0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("car_colour"), "{msg}");
    }

    #[test]
    fn unknown_field_in_a_condition_fails_at_load() {
        let tmp = TempDir::with_real_templates("unknown-if");
        let file = tmp.0.join("daily_agenda").join("push_body.hbs");
        std::fs::write(&file, "{{#if lesons}}x{{else}}y{{/if}}").unwrap();
        let msg = Renderer::load(&tmp.0).unwrap_err().to_string();
        assert!(msg.contains(&file.display().to_string()), "{msg}");
    }

    #[test]
    fn bad_helper_use_fails_at_load() {
        let tmp = TempDir::with_real_templates("bad-helper");
        let file = tmp.0.join("invoice_issued").join("subject.hbs");
        std::fs::write(&file, "{{money invoice.number invoice.currency}}").unwrap();
        let msg = Renderer::load(&tmp.0).unwrap_err().to_string();
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("money"), "{msg}");
    }

    // --- SMS length --------------------------------------------------------

    const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
        ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    const GSM7_EXTENDED: &str = "\u{c}^{}\\[~]|€";

    /// Length in GSM-7 septets, or `None` when a character is outside GSM-7.
    fn gsm7_len(s: &str) -> Option<usize> {
        s.chars().try_fold(0, |n, c| {
            if GSM7_BASIC.contains(c) {
                Some(n + 1)
            } else if GSM7_EXTENDED.contains(c) {
                Some(n + 2)
            } else {
                None
            }
        })
    }

    /// Replaces names, places, free text and times with long but realistic
    /// values.
    fn stretch(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    let long = match key.as_str() {
                        "first_name" => Some("Alexandra-Louise"),
                        "last_name" => Some("Montgomery-Fitzgerald"),
                        "instructor_name" | "sender_name" => Some("Christopher Fotheringham-Smythe"),
                        "student_name" => Some("Alexandra-Louise Montgomery-Fitzgerald"),
                        "pickup_location" => Some("Flat 14, Harrington Court, 212 Old Brompton Road, London SW5 0BS"),
                        "name" => Some("Harrington & Westbury School of Motoring (Kensington)"),
                        "reason" if v.is_string() => Some("outside the instructor's availability"),
                        "notes" => Some("Good control on hill starts; keep working on observation at junctions."),
                        "offset_label" => Some("24 hours"),
                        "number" => Some("INV-2026-000123"),
                        "preview" => Some(
                            "Hi Alexandra, just confirming we'll meet outside the library at 8:30 on Thursday. Please bring your provisional licence and glasses, thanks",
                        ),
                        _ => None,
                    };
                    let is_time = v.as_str().is_some_and(|s| DateTime::parse_from_rfc3339(s).is_ok());
                    match long {
                        Some(s) if !v.is_null() => *v = json!(s),
                        // The longest day and month names: "Wednesday 30 September".
                        _ if is_time => *v = json!("2026-09-30T16:30:00Z"),
                        _ => stretch(v),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(stretch),
            _ => {}
        }
    }

    #[test]
    fn sms_fits_two_gsm7_segments() {
        let r = renderer();
        for kind in Kind::ALL {
            let mut contexts = check_contexts(kind);
            let mut long = Renderer::sample_context(kind);
            stretch(&mut long);
            contexts.push(long.clone());
            match kind {
                Kind::InvoiceIssued => {
                    long["invoice"]["currency"] = json!("EUR");
                    long["invoice"]["total_minor"] = json!(12345678);
                    contexts.push(long);
                }
                Kind::BookingAlert => {
                    for change in ["new", "cancelled"] {
                        long["change"] = json!(change);
                        contexts.push(long.clone());
                    }
                }
                Kind::TestReminder => {
                    long["test"]["days_before"] = json!(1);
                    contexts.push(long);
                }
                _ => {}
            }
            for ctx in &contexts {
                let sms = r.render(kind, Part::Sms, ctx).unwrap();
                let len = gsm7_len(&sms).unwrap_or_else(|| panic!("{kind}: non-GSM-7 character in {sms:?}"));
                assert!(len <= 306, "{kind}: {len} septets: {sms}");
            }
        }
    }

    #[test]
    fn gsm7_counter_counts_extension_characters_twice() {
        assert_eq!(gsm7_len("Hi £5"), Some(5));
        assert_eq!(gsm7_len("€5"), Some(3));
        assert_eq!(gsm7_len("Hi — there"), None);
        assert_eq!(gsm7_len("it’s"), None);
    }
}
