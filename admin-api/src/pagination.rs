//! Lists: `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`], 422 beyond) and an opaque
//! `cursor` (the last id of the previous page), answered as a [`Paged`] list, `{items,
//! next_cursor}`. Each list fetches one row more than asked to know whether another page
//! follows ([`finish`]).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

/// Items per page when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 50;
/// The largest `limit`.
pub const MAX_LIMIT: i64 = 500;

/// Validates `limit`.
pub fn limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid("limit", format!("expected 1 to {MAX_LIMIT}, got {n}"))),
    }
}

/// Reads a cursor made of a numeric id.
pub fn id_cursor(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    match cursor.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(c) => c
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::invalid("cursor", "not a cursor this list gave out")),
    }
}

/// A page of a list, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Paged<T> {
    /// The page's items.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

impl<T> Paged<T> {
    /// The same page with each item turned into another.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Paged<U> {
        Paged {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// Cuts the extra row off: the page, with the cursor of the next one (`key` of its last item)
/// when there is one.
pub fn finish<T>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Paged<T> {
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(key)
    } else {
        None
    };
    Paged { items: rows, next_cursor }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_bounded_and_cursors_come_from_the_last_row() {
        assert_eq!(limit(None).unwrap(), 50);
        assert_eq!(limit(Some(500)).unwrap(), 500);
        assert!(limit(Some(501)).is_err());
        assert!(limit(Some(0)).is_err());
        assert_eq!(id_cursor(Some("42")).unwrap(), Some(42));
        assert!(id_cursor(Some("x")).is_err());
        let page = |p: Paged<i32>| (p.items, p.next_cursor);
        assert_eq!(page(finish(vec![3, 2, 1], 2, |n| n.to_string())), (vec![3, 2], Some("2".into())));
        assert_eq!(page(finish(vec![3, 2], 2, |n| n.to_string())), (vec![3, 2], None));
        assert_eq!(
            page(finish(vec![3, 2, 1], 2, |n| n.to_string()).map(|n| n * 10)),
            (vec![30, 20], Some("2".into()))
        );
    }
}
