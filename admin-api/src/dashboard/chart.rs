//! The Queues page's chart: jobs finished per minute over the last hour, done and failed, from
//! apalis's `done_at` and `status` (read by `dashlight_core::queue::per_minute`). The geometry of an
//! inline SVG bar chart is computed here, so the template only places numbers.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use sqlx::PgExecutor;

/// Minutes shown.
pub const MINUTES: usize = 60;
/// The SVG's drawing width.
pub const WIDTH: f64 = 900.0;
/// The SVG's drawing height (bars only; labels go below).
pub const HEIGHT: f64 = 160.0;

pub use dashlight_core::queue::Minute;

/// Per-minute counts, oldest first: slot `MINUTES - 1` is the minute ending at `now`.
pub async fn per_minute<'c>(exec: impl PgExecutor<'c>, now: DateTime<Utc>) -> Result<Vec<Minute>, sqlx::Error> {
    dashlight_core::queue::per_minute(exec, now, MINUTES).await
}

/// One bar: the done part at the bottom, the failed part stacked on it.
#[derive(Debug, Clone, Serialize)]
pub struct Bar {
    /// Left edge.
    pub x: String,
    /// Width.
    pub w: String,
    /// Top of the done part.
    pub done_y: String,
    /// Height of the done part.
    pub done_h: String,
    /// Top of the failed part.
    pub failed_y: String,
    /// Height of the failed part.
    pub failed_h: String,
    /// Tooltip: the minute and its counts.
    pub label: String,
    /// Anything to draw.
    pub any: bool,
}

/// A label on the time axis.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    /// Position.
    pub x: String,
    /// `14:05`.
    pub text: String,
    /// `start`, `middle` or `end`, so the outer labels stay inside the drawing.
    pub anchor: &'static str,
}

/// The chart, ready for the template.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    /// Drawing width.
    pub width: f64,
    /// Drawing height.
    pub height: f64,
    /// Height with the axis labels.
    pub full_height: f64,
    /// Baseline of the axis labels.
    pub label_y: f64,
    /// One per minute, oldest first.
    pub bars: Vec<Bar>,
    /// Time labels.
    pub ticks: Vec<Tick>,
    /// The busiest minute's total, the top of the scale.
    pub max: i64,
    /// Jobs done in the hour.
    pub total_done: i64,
    /// Jobs failed in the hour.
    pub total_failed: i64,
}

fn n(v: f64) -> String {
    format!("{v:.1}")
}

/// Lays the minutes out; `now` and `tz` name the minutes.
pub fn layout(minutes: &[Minute], now: DateTime<Utc>, tz: Tz) -> Chart {
    let max = minutes.iter().map(|m| m.done + m.failed).max().unwrap_or(0).max(1);
    let slot = WIDTH / minutes.len().max(1) as f64;
    let scale = HEIGHT / max as f64;
    let minute_at = |i: usize| now - Duration::minutes((minutes.len() - 1 - i) as i64);
    let bars = minutes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let done_h = m.done as f64 * scale;
            let failed_h = m.failed as f64 * scale;
            let at = minute_at(i).with_timezone(&tz).format("%H:%M");
            Bar {
                x: n(i as f64 * slot + 0.5),
                w: n((slot - 1.0).max(1.0)),
                done_y: n(HEIGHT - done_h),
                done_h: n(done_h),
                failed_y: n(HEIGHT - done_h - failed_h),
                failed_h: n(failed_h),
                label: format!("{at}: {} done, {} failed", m.done, m.failed),
                any: m.done + m.failed > 0,
            }
        })
        .collect();
    let last = minutes.len().saturating_sub(1);
    let ticks = (0..minutes.len())
        .step_by(15)
        .chain(std::iter::once(last))
        .map(|i| {
            let (x, anchor) = match i {
                0 => (0.0, "start"),
                i if i == last => (WIDTH, "end"),
                i => (i as f64 * slot + slot / 2.0, "middle"),
            };
            Tick {
                x: n(x),
                text: minute_at(i).with_timezone(&tz).format("%H:%M").to_string(),
                anchor,
            }
        })
        .collect();
    Chart {
        width: WIDTH,
        height: HEIGHT,
        full_height: HEIGHT + 22.0,
        label_y: HEIGHT + 16.0,
        bars,
        ticks,
        max,
        total_done: minutes.iter().map(|m| m.done).sum(),
        total_failed: minutes.iter().map(|m| m.failed).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_stack_and_scale_to_the_busiest_minute() {
        let mut minutes = vec![Minute::default(); MINUTES];
        minutes[59] = Minute { done: 3, failed: 1 };
        minutes[0] = Minute { done: 2, failed: 0 };
        let c = layout(&minutes, Utc::now(), chrono_tz::UTC);
        assert_eq!(c.max, 4);
        assert_eq!((c.total_done, c.total_failed), (5, 1));
        let last = &c.bars[59];
        assert_eq!(last.done_h, "120.0");
        assert_eq!(last.x, "885.5");
        assert_eq!(last.failed_h, "40.0");
        assert_eq!(last.failed_y, "0.0");
        assert!(c.bars[0].any && !c.bars[1].any);
        assert_eq!(c.ticks.len(), 5);
        assert_eq!(
            (c.ticks[0].anchor, c.ticks[4].anchor, c.ticks[4].x.as_str()),
            ("start", "end", "900.0")
        );
    }
}
