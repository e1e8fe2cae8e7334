//! Collection listings sent as they are read, so a `?full=1` GET's memory does not grow with
//! the collection (issue 13). A listing is one read unit of work. A page that fits in one chunk
//! of `CHUNK_RECORDS` (the common case) is one query, without a transaction (`units::first_page`
//! says how its timestamp is paired with it). A bigger full page, on one snapshot, first reads
//! the ids and timestamps of the whole page (small; they give `X-Weave-Records` and the next
//! offset before any byte of the body is sent), then the records in chunks, each handed to the
//! response through a channel of `CHANNEL_CHUNKS`. A client that stops reading for `STALL` ends
//! the unit of work.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::db::BsoPage;
use crate::error::{ApiError, ApiResult, ErrorKind};
use crate::protocol::{Bso, BsoQuery, Offset};

/// Records read and sent at a time (each at most max_record_payload_bytes).
pub const CHUNK_RECORDS: u32 = 16;
/// Chunks buffered between the database and the response.
pub const CHANNEL_CHUNKS: usize = 2;
/// How long the database side waits for a client that does not read.
pub const STALL: Duration = Duration::from_secs(60);

/// What the database side sends: the head, then (when `more`) the records, in order. A head
/// without `more` is the whole answer (full records or ids, as asked).
#[derive(Debug)]
pub enum Listing {
    Head { page: BsoPage, more: bool },
    Records(Vec<Bso>),
}

pub type ListingSender = mpsc::Sender<ApiResult<Listing>>;

/// A listing as the response sees it: the head (the whole answer, or the ids, timestamps and
/// next offset of a bigger one) and the chunks still to come.
pub struct BsoStream {
    pub head: BsoPage,
    pub records: Option<mpsc::Receiver<ApiResult<Listing>>>,
}

pub fn channel() -> (ListingSender, mpsc::Receiver<ApiResult<Listing>>) {
    mpsc::channel(CHANNEL_CHUNKS)
}

fn gone() -> ApiError {
    ApiError::new(ErrorKind::Conflict, "listing abandoned by the client")
}

/// Sends from an async unit of work; an error when the client went away or stalled.
pub async fn send(tx: &ListingSender, item: ApiResult<Listing>) -> ApiResult<()> {
    match tokio::time::timeout(STALL, tx.send(item)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(gone()),
    }
}

/// How many records the first read takes: a page within one chunk is read whole at once.
pub fn first_chunk(q: &BsoQuery, max_records: u32) -> u32 {
    q.limit
        .unwrap_or(max_records)
        .min(max_records)
        .min(CHUNK_RECORDS)
}

/// The head query: the page's ids and timestamps only.
pub fn head_query(q: &BsoQuery) -> BsoQuery {
    BsoQuery {
        full: false,
        ..q.clone()
    }
}

/// The query for the next chunk of full records: `n` records from `offset`.
pub fn chunk_query(q: &BsoQuery, offset: Offset, n: u32) -> BsoQuery {
    BsoQuery {
        full: true,
        limit: Some(n),
        offset,
        ..q.clone()
    }
}

/// How many records the next chunk reads, `None` when all `total` were sent.
pub fn next_chunk(total: usize, sent: usize) -> Option<u32> {
    (sent < total).then(|| (total - sent).min(CHUNK_RECORDS as usize) as u32)
}

/// Waits for the head of a listing started on another task; errors before it (304, 412, a
/// database failure) come back here.
pub async fn receive(mut rx: mpsc::Receiver<ApiResult<Listing>>) -> ApiResult<BsoStream> {
    match rx.recv().await {
        Some(Ok(Listing::Head { page, more })) => Ok(BsoStream {
            records: more.then_some(rx),
            head: page,
        }),
        Some(Err(e)) => Err(e),
        Some(Ok(Listing::Records(_))) | None => {
            Err(ApiError::internal("listing ended before its head"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_page_exactly() {
        let mut sent = 0;
        let mut sizes = Vec::new();
        while let Some(n) = next_chunk(40, sent) {
            sizes.push(n);
            sent += n as usize;
        }
        assert_eq!(sizes, vec![16, 16, 8]);
        assert_eq!(next_chunk(0, 0), None);
    }

    #[tokio::test]
    async fn a_gone_client_ends_the_sender() {
        let (tx, rx) = channel();
        drop(rx);
        assert!(send(&tx, Ok(Listing::Records(vec![]))).await.is_err());
    }

    #[test]
    fn a_small_page_is_one_read() {
        let q = |limit| BsoQuery {
            limit,
            ..BsoQuery::default()
        };
        assert_eq!(first_chunk(&q(Some(5)), 10_000), 5);
        assert_eq!(first_chunk(&q(None), 10_000), CHUNK_RECORDS);
        assert_eq!(first_chunk(&q(None), 3), 3);
    }
}
