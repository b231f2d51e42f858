//! The HTML pages people open in a browser, all rendered one way: the operators' dashboard, a
//! person's own page (with a lesson's confirmation page), the offer link's page and the
//! unsubscribe link's page.
//!
//! - [`Pages`]: one area's handlebars templates (not strict; every value escaped: no template
//!   uses the triple-stash) with its [`Policy`]. [`Pages::render`] answers a template with a
//!   status and the security headers; a template that fails to render is logged and answered
//!   with [`FALLBACK`] (500), headers and all.
//! - [`Policy::secure`]: the headers of every page: the area's Content-Security-Policy and
//!   `Referrer-Policy`, `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`, and
//!   `Cache-Control: no-store` unless the response chose its own. [`NO_SCRIPT`] is the policy
//!   of the pages without any script (offer and unsubscribe links).
//! - Content negotiation: [`wants_html`] tells a browser (an `Accept` naming `text/html` and not
//!   `application/json`) from other clients. An error page marked with [`with_error`] is
//!   replaced by the API's JSON error body, same status, for the others by the [`negotiate`]
//!   middleware; [`json_error`] is that body with any status.
//! - [`asset`]: a static file of this server (a stylesheet, a script), `no-cache` and `nosniff`.

use axum::{
    Json,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use handlebars::Handlebars;
use serde::Serialize;

use crate::error::ErrorBody;

/// What a page answers when its template fails to render (with status 500).
pub const FALLBACK: &str = "<!DOCTYPE html><title>Error</title><p>Something went wrong.</p>";

/// The headers that differ between the areas' pages.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `Content-Security-Policy`.
    pub csp: &'static str,
    /// `Referrer-Policy`: `same-origin` where the address holds a secret only this site may
    /// see, `no-referrer` where nothing on the page links on.
    pub referrer: &'static str,
}

/// The pages without any script: inline styles only, forms to this server, no referrer.
pub const NO_SCRIPT: Policy = Policy {
    csp: "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    referrer: "no-referrer",
};

impl Policy {
    /// Sets the security and caching headers of a page (a `Cache-Control` already set is kept).
    pub fn secure(&self, h: &mut HeaderMap) {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(self.csp));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static(self.referrer));
        h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    }
}

/// One area's page templates and the headers they are served with.
pub struct Pages {
    area: &'static str,
    policy: Policy,
    sources: &'static [(&'static str, &'static str)],
    registry: Handlebars<'static>,
}

impl Pages {
    /// The templates `sources` (`(name, text)`), compiled; panics on a template that does not
    /// compile (they are compiled into the binary, and tests force every registry).
    pub fn new(area: &'static str, policy: Policy, sources: &'static [(&'static str, &'static str)]) -> Pages {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(false);
        for (name, text) in sources {
            registry
                .register_template_string(name, *text)
                .unwrap_or_else(|e| panic!("{area} template {name}: {e}"));
        }
        Pages {
            area,
            policy,
            sources,
            registry,
        }
    }

    /// Also makes the template `name` a partial of the others (`{{#> name}}`).
    pub fn with_partial(mut self, name: &str) -> Pages {
        let (_, text) = self
            .sources
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{} partial {name}: no such template", self.area));
        self.registry
            .register_partial(name, *text)
            .unwrap_or_else(|e| panic!("{} partial {name}: {e}", self.area));
        self
    }

    /// The headers of this area's pages.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The template `name` rendered with `data`.
    pub fn render_to_string(&self, name: &str, data: &impl Serialize) -> Result<String, handlebars::RenderError> {
        self.registry.render(name, data)
    }

    /// The page: the template `name` rendered with `data`, with `status` and the headers of
    /// [`Policy::secure`]; [`FALLBACK`] with 500 when the template fails.
    pub fn render(&self, status: StatusCode, name: &str, data: &impl Serialize) -> Response {
        let mut res = match self.render_to_string(name, data) {
            Ok(body) => (status, Html(body)).into_response(),
            Err(e) => {
                tracing::error!(area = self.area, template = name, error = %e, "page template failed");
                (StatusCode::INTERNAL_SERVER_ERROR, Html(FALLBACK)).into_response()
            }
        };
        self.policy.secure(res.headers_mut());
        res
    }

    /// Every template is registered, and none uses the triple-stash (unescaped output).
    #[cfg(test)]
    pub fn assert_templates_escape(&self) {
        for (name, text) in self.sources {
            assert!(self.registry.has_template(name), "{} template {name}", self.area);
            assert!(!text.contains("{{{"), "unescaped output in {} template {name}", self.area);
        }
    }
}

/// True when the client wants a page: it names `text/html` (browsers navigating and posting
/// forms do) and does not ask for JSON.
pub fn wants_html(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    accept.contains("text/html") && !accept.contains("application/json")
}

/// A JSON error with the API's error body and any status (410 has no [`crate::ApiError`]
/// variant), never cached.
pub fn json_error(status: StatusCode, code: &str, message: &str, field: Option<String>) -> Response {
    let body = ErrorBody {
        error: code.to_owned(),
        message: message.to_owned(),
        field,
    };
    no_store((status, Json(body)).into_response())
}

/// `res` with `Cache-Control: no-store`.
pub fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// What an error page says, for clients that want JSON instead ([`negotiate`]).
#[derive(Debug, Clone)]
struct ErrorInfo {
    code: &'static str,
    message: String,
    field: Option<String>,
}

/// Marks `res`, an error page, with what its JSON error body says: [`negotiate`] answers that
/// body instead to clients that do not want a page.
pub fn with_error(mut res: Response, code: &'static str, message: &str, field: Option<String>) -> Response {
    res.extensions_mut().insert(ErrorInfo {
        code,
        message: message.to_owned(),
        field,
    });
    res
}

/// The JSON error code of an error page's status.
pub fn error_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        403 => "forbidden",
        404 => "not_found",
        422 => "invalid_value",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "bad_request",
    }
}

/// Middleware: error pages ([`with_error`]) go to browsers; every other client gets the API's
/// JSON error body (same status, the field at fault named).
pub async fn negotiate(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let html = wants_html(req.headers());
    let mut res = next.run(req).await;
    let info = res.extensions_mut().remove::<ErrorInfo>();
    match info {
        Some(info) if !html => json_error(res.status(), info.code, &info.message, info.field),
        _ => res,
    }
}

/// A static file of this server: `no-cache` (revalidated, so a new build is picked up) and
/// `nosniff`.
pub fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response();
    res.headers_mut()
        .insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_get_pages_and_clients_json() {
        let mut h = HeaderMap::new();
        assert!(!wants_html(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
        );
        assert!(wants_html(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_html(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html, application/json"));
        assert!(!wants_html(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!wants_html(&h));
    }

    #[test]
    fn a_page_carries_the_policy_and_keeps_its_own_caching() {
        static SOURCES: &[(&str, &str)] = &[("t", "<p>{{x}}</p>")];
        let pages = Pages::new("test", NO_SCRIPT, SOURCES);
        pages.assert_templates_escape();
        let res = pages.render(StatusCode::GONE, "t", &serde_json::json!({ "x": "<b>" }));
        assert_eq!(res.status(), StatusCode::GONE);
        let h = res.headers();
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], NO_SCRIPT.csp);
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(
            pages.render_to_string("t", &serde_json::json!({ "x": "<b>" })).unwrap(),
            "<p>&lt;b&gt;</p>"
        );
        let failed = pages.render(StatusCode::OK, "missing", &());
        assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(failed.headers()[header::CONTENT_SECURITY_POLICY], NO_SCRIPT.csp);
        let mut own = asset("text/css", "");
        NO_SCRIPT.secure(own.headers_mut());
        assert_eq!(own.headers()[header::CACHE_CONTROL], "no-cache");
    }
}
