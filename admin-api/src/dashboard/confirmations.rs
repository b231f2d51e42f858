//! The Confirmations page (`/confirmations`): the call list (upcoming lessons their students have
//! not confirmed, within `CONFIRM_ALERT_BEFORE` of the start) and what the reminders achieve, as
//! an inline SVG chart per day (reminded lessons split into confirmed and not, each with its
//! no-shows) and a table per first reminder channel, from the figures of
//! `GET /api/analytics/confirmations`. The geometry is computed here; the template only places
//! numbers.

use std::collections::BTreeMap;

use axum::{extract::State, http::StatusCode, response::Response};
use chrono::{Duration, NaiveDate};
use dashlight_core::analytics::{self, ConfirmationFigures};
use serde::Serialize;

use super::{Layout, Operator, error_page, render, view};
use crate::{
    AppState,
    error::ApiError,
    extract::ApiQuery,
    http::analytics::{RangeQuery, range},
};

/// The SVG's drawing width.
pub const WIDTH: f64 = 900.0;
/// The SVG's drawing height (bars only; labels go below).
pub const HEIGHT: f64 = 180.0;

/// One day's bar: four stacked parts, bottom up.
#[derive(Debug, Clone, Serialize)]
pub struct DayBar {
    /// Left edge.
    pub x: String,
    /// Width.
    pub w: String,
    /// `(y, height)` of: confirmed and came (or not marked), confirmed no-show, unconfirmed and
    /// came, unconfirmed no-show.
    pub parts: Vec<Part>,
    /// Tooltip.
    pub label: String,
    /// Anything to draw.
    pub any: bool,
}

/// One stacked part of a bar.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    /// CSS class.
    pub class: &'static str,
    /// Top.
    pub y: String,
    /// Height.
    pub h: String,
}

/// A label on the day axis.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    /// Position.
    pub x: String,
    /// `3 Mar`.
    pub text: String,
    /// `start`, `middle` or `end`.
    pub anchor: &'static str,
}

/// The chart.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    /// Drawing width.
    pub width: f64,
    /// Drawing height.
    pub height: f64,
    /// With the labels.
    pub full_height: f64,
    /// Baseline of the labels.
    pub label_y: f64,
    /// One per day, oldest first.
    pub bars: Vec<DayBar>,
    /// Day labels.
    pub ticks: Vec<Tick>,
    /// The busiest day's reminded lessons (top of the scale).
    pub max: i64,
}

/// Totals of one first reminder channel over the range.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChannelRow {
    /// `push`, `sms`, `email`.
    pub channel: String,
    /// Reminded lessons.
    pub reminded: i64,
    /// Confirmed.
    pub confirmed: i64,
    /// `83%`.
    pub confirm_rate: String,
    /// The median of the days' medians, minutes (`—` without any).
    pub minutes: String,
    /// `2 of 40 (5%)`.
    pub no_shows_confirmed: String,
    /// `3 of 8 (38%)`.
    pub no_shows_unconfirmed: String,
}

fn n(v: f64) -> String {
    format!("{v:.1}")
}

fn pct(part: i64, of: i64) -> String {
    if of == 0 {
        "—".into()
    } else {
        format!("{}%", (part as f64 * 100.0 / of as f64).round())
    }
}

/// The chart of the days `from..=to` (days without figures are empty slots).
pub fn chart(from: NaiveDate, to: NaiveDate, rows: &[ConfirmationFigures]) -> Chart {
    let days = (to - from).num_days().max(0) as usize + 1;
    #[derive(Default, Clone, Copy)]
    struct Day {
        confirmed: i64,
        unconfirmed: i64,
        ns_c: i64,
        ns_u: i64,
    }
    let mut by_day: BTreeMap<NaiveDate, Day> = BTreeMap::new();
    for r in rows {
        let d = by_day.entry(r.day).or_default();
        d.confirmed += i64::from(r.confirmed);
        d.unconfirmed += i64::from(r.reminded - r.confirmed);
        d.ns_c += i64::from(r.no_shows_confirmed);
        d.ns_u += i64::from(r.no_shows_unconfirmed);
    }
    let max = by_day.values().map(|d| d.confirmed + d.unconfirmed).max().unwrap_or(0).max(1);
    let slot = WIDTH / days as f64;
    let w = (slot * 0.7).max(1.0);
    let scale = HEIGHT / max as f64;
    let mut bars = Vec::with_capacity(days);
    let mut ticks = Vec::new();
    let every = days.div_ceil(10).max(1);
    for i in 0..days {
        let day = from + Duration::days(i as i64);
        let d = by_day.get(&day).copied().unwrap_or_default();
        let x = i as f64 * slot + (slot - w) / 2.0;
        let mut top = HEIGHT;
        let mut parts = Vec::new();
        for (class, count) in [
            ("bar-confirmed", d.confirmed - d.ns_c),
            ("bar-confirmed-noshow", d.ns_c),
            ("bar-unconfirmed", d.unconfirmed - d.ns_u),
            ("bar-unconfirmed-noshow", d.ns_u),
        ] {
            let h = count.max(0) as f64 * scale;
            top -= h;
            parts.push(Part { class, y: n(top), h: n(h) });
        }
        bars.push(DayBar {
            x: n(x),
            w: n(w),
            parts,
            label: format!(
                "{}: {} reminded, {} confirmed ({} no-shows), {} not confirmed ({} no-shows)",
                day.format("%a %-d %b"),
                d.confirmed + d.unconfirmed,
                d.confirmed,
                d.ns_c,
                d.unconfirmed,
                d.ns_u
            ),
            any: d.confirmed + d.unconfirmed > 0,
        });
        if i % every == 0 || i + 1 == days {
            let center = i as f64 * slot + slot / 2.0;
            ticks.push(Tick {
                x: n(center),
                text: day.format("%-d %b").to_string(),
                anchor: if i == 0 {
                    "start"
                } else if i + 1 == days {
                    "end"
                } else {
                    "middle"
                },
            });
        }
    }
    // Keep the last label clear of the one before it.
    if ticks.len() >= 2 {
        let last = ticks.len() - 1;
        if (last % every) != 0 && days - 1 - (last - 1) * every < every / 2 {
            ticks.remove(last - 1);
        }
    }
    Chart {
        width: WIDTH,
        height: HEIGHT,
        full_height: HEIGHT + 22.0,
        label_y: HEIGHT + 16.0,
        bars,
        ticks,
        max,
    }
}

/// Totals per channel (push, SMS, email order).
pub fn channels(rows: &[ConfirmationFigures]) -> Vec<ChannelRow> {
    let mut out = Vec::new();
    for ch in ["push", "sms", "email"] {
        let of: Vec<&ConfirmationFigures> = rows.iter().filter(|r| r.channel == ch).collect();
        if of.is_empty() {
            continue;
        }
        let sum = |f: fn(&ConfirmationFigures) -> i32| of.iter().map(|r| i64::from(f(r))).sum::<i64>();
        let reminded = sum(|r| r.reminded);
        let confirmed = sum(|r| r.confirmed);
        let ns_c = sum(|r| r.no_shows_confirmed);
        let ns_u = sum(|r| r.no_shows_unconfirmed);
        let mut medians: Vec<f64> = of.iter().filter_map(|r| r.confirm_minutes_p50).collect();
        medians.sort_by(f64::total_cmp);
        let minutes = match medians.len() {
            0 => "—".to_owned(),
            k if k % 2 == 1 => format!("{:.0}", medians[k / 2]),
            k => format!("{:.0}", (medians[k / 2 - 1] + medians[k / 2]) / 2.0),
        };
        out.push(ChannelRow {
            channel: ch.to_owned(),
            reminded,
            confirmed,
            confirm_rate: pct(confirmed, reminded),
            minutes,
            no_shows_confirmed: format!("{ns_c} of {confirmed} ({})", pct(ns_c, confirmed)),
            no_shows_unconfirmed: format!("{ns_u} of {} ({})", reminded - confirmed, pct(ns_u, reminded - confirmed)),
        });
    }
    out
}

#[derive(Serialize)]
struct CallRow {
    booking_id: i64,
    start: view::Time,
    student: String,
    phone: Option<String>,
    instructor: String,
    alerted: bool,
}

#[derive(Serialize)]
struct ConfirmationsPage {
    from: String,
    to: String,
    chart: Chart,
    channels: Vec<ChannelRow>,
    calls: Vec<CallRow>,
    alert_window: Option<String>,
    nudge: Option<String>,
    empty: bool,
}

/// `GET /confirmations`.
pub async fn page(State(state): State<AppState>, _: Operator, ApiQuery(q): ApiQuery<RangeQuery>) -> Response {
    let layout = Layout::new(&state, "Confirmations", "confirmations");
    match build(&state, &q).await {
        Ok(p) => render(StatusCode::OK, "confirmations", &layout, &p),
        Err(e) => error_page(layout, e),
    }
}

async fn build(state: &AppState, q: &RangeQuery) -> Result<ConfirmationsPage, ApiError> {
    let now = state.clock.now();
    let tz = state.config.school_timezone;
    let (from, to) = range(now.with_timezone(&tz).date_naive(), q)?;
    let mut conn = state.pool.acquire().await?;
    let rows = analytics::confirmation_figures(&mut conn, from, to).await?;
    let alert = state.config.confirm_alert_before;
    let calls = match alert {
        Some(within) => analytics::unconfirmed_lessons(&mut conn, now, Duration::from_std(within).unwrap_or(Duration::hours(3))).await?,
        None => vec![],
    };
    Ok(ConfirmationsPage {
        from: from.to_string(),
        to: to.to_string(),
        chart: chart(from, to, &rows),
        channels: channels(&rows),
        calls: calls
            .into_iter()
            .map(|c| CallRow {
                booking_id: c.booking_id,
                start: view::time(c.start_time, tz),
                student: c.student_name,
                phone: c.student_phone,
                instructor: c.instructor_name,
                alerted: c.alerted,
            })
            .collect(),
        alert_window: alert.map(dashlight_core::bookings::human_offset),
        nudge: state.config.confirm_nudge_before.map(dashlight_core::bookings::human_offset),
        empty: rows.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(day: &str, channel: &str, reminded: i32, confirmed: i32, p50: Option<f64>, ns_c: i32, ns_u: i32) -> ConfirmationFigures {
        ConfirmationFigures {
            day: day.parse().unwrap(),
            channel: channel.into(),
            reminded,
            confirmed,
            confirm_minutes_p50: p50,
            no_shows_confirmed: ns_c,
            no_shows_unconfirmed: ns_u,
        }
    }

    #[test]
    fn bars_stack_to_the_days_reminded_lessons() {
        let rows = [
            fig("2026-03-02", "push", 6, 5, Some(12.0), 0, 1),
            fig("2026-03-02", "sms", 2, 1, Some(40.0), 0, 1),
            fig("2026-03-04", "email", 4, 2, None, 1, 0),
        ];
        let c = chart("2026-03-01".parse().unwrap(), "2026-03-05".parse().unwrap(), &rows);
        assert_eq!((c.bars.len(), c.max), (5, 8));
        assert!(!c.bars[0].any && c.bars[1].any && c.bars[3].any);
        let total: f64 = c.bars[1].parts.iter().map(|p| p.h.parse::<f64>().unwrap()).sum();
        assert_eq!(total, HEIGHT, "the busiest day fills the height");
        assert_eq!(c.bars[1].parts[0].h, n(6.0 * HEIGHT / 8.0));
        assert!(
            c.bars[1]
                .label
                .contains("8 reminded, 6 confirmed (0 no-shows), 2 not confirmed (2 no-shows)")
        );
        let ch = channels(&rows);
        assert_eq!(ch.iter().map(|r| r.channel.as_str()).collect::<Vec<_>>(), ["push", "sms", "email"]);
        assert_eq!(ch[0].confirm_rate, "83%");
        assert_eq!(ch[0].no_shows_unconfirmed, "1 of 1 (100%)");
        assert_eq!(ch[2].minutes, "—");
    }
}
