//! Shared query of the keyset-paged lists (`?cursor=&limit=`).

use crate::config::LimitSettings;
use crate::error::{Error, Result};
use confab_persistence::ActivityCursor;
use serde::Deserialize;

/// `?cursor=&limit=` of a keyset-paged list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size (1 to `list_page_max`, default `list_page_default`).
    limit: Option<u64>,
}

impl PageQuery {
    /// The decoded cursor and the page size, or `bad_request`.
    pub fn resolve(&self, limits: &LimitSettings) -> Result<(Option<ActivityCursor>, u64)> {
        let max = limits.list_page_max.max(1);
        let limit = self.limit.unwrap_or(limits.list_page_default).min(max);
        if self.limit == Some(0) || self.limit.is_some_and(|l| l > max) {
            return Err(Error::BadRequest(format!("limit must be 1 to {max}")));
        }
        let cursor = match self.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => Some(
                ActivityCursor::decode(c)
                    .ok_or_else(|| Error::BadRequest("invalid cursor".into()))?,
            ),
        };
        Ok((cursor, limit.max(1)))
    }
}
