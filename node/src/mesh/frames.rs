//! Length-prefixed frames on a libp2p stream (`u32be length ‖ body`), bounded by
//! `hearth_protocol::sync::MAX_FRAME`. Memory grows with the bytes that actually
//! arrive, not with the length a peer claims.

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hearth_protocol::sync::{FrameError, frame_len};

/// A frame that has begun must finish within this time.
const FRAME_BODY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the stream ended in the middle of a frame")]
    Truncated,
    #[error("a frame took longer than {FRAME_BODY_TIMEOUT:?} to arrive")]
    Slow,
}

/// Reads one frame; `None` when the stream ends cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, FrameReadError> {
    read_frame_with_room(reader, 0, 0, 64 * 1024).await
}

/// Like [`read_frame`], but the body lands behind `head` zero bytes, in a buffer with
/// room for `tail` more bytes after it, so that the caller can work on it where it lies
/// (a blob chunk is sealed in the buffer it arrived in). A body of at most `expected`
/// bytes is read into a buffer of its size; a longer one grows with the bytes that
/// actually arrive.
pub async fn read_frame_with_room<R: AsyncRead + Unpin>(
    reader: &mut R,
    head: usize,
    tail: usize,
    expected: usize,
) -> Result<Option<Vec<u8>>, FrameReadError> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < 4 {
        let n = if filled == 0 {
            reader.read(&mut prefix).await?
        } else {
            tokio::time::timeout(FRAME_BODY_TIMEOUT, reader.read(&mut prefix[filled..]))
                .await
                .map_err(|_| FrameReadError::Slow)??
        };
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameReadError::Truncated)
            };
        }
        filled += n;
    }
    let len = frame_len(prefix)?;
    let mut body = Vec::with_capacity(head + len.min(expected) + tail);
    body.resize(head, 0);
    let read = tokio::time::timeout(
        FRAME_BODY_TIMEOUT,
        reader.take(len as u64).read_to_end(&mut body),
    )
    .await
    .map_err(|_| FrameReadError::Slow)??;
    if read != len {
        return Err(FrameReadError::Truncated);
    }
    Ok(Some(body))
}

pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame too large"))?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(body).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::sync::MAX_FRAME;

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").await.unwrap();
        write_frame(&mut buf, b"").await.unwrap();
        let mut r = futures::io::Cursor::new(buf.clone());
        assert_eq!(read_frame(&mut r).await.unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r).await.unwrap().unwrap(), b"");
        assert!(read_frame(&mut r).await.unwrap().is_none());

        let mut truncated = futures::io::Cursor::new(buf[..7].to_vec());
        assert!(matches!(
            read_frame(&mut truncated).await,
            Err(FrameReadError::Truncated)
        ));
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        let mut huge = futures::io::Cursor::new(huge);
        assert!(matches!(
            read_frame(&mut huge).await,
            Err(FrameReadError::Frame(FrameError::TooLarge(_)))
        ));
        // A claimed length with little behind it allocates little and fails cleanly.
        let mut liar = (MAX_FRAME as u32).to_be_bytes().to_vec();
        liar.extend_from_slice(b"tiny");
        let mut liar = futures::io::Cursor::new(liar);
        assert!(matches!(
            read_frame(&mut liar).await,
            Err(FrameReadError::Truncated)
        ));

        // With room: the body behind `head` zero bytes, in a buffer of its size plus
        // the tail when it is as long as expected.
        let mut r = futures::io::Cursor::new(buf.clone());
        let framed = read_frame_with_room(&mut r, 3, 16, 5)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(framed, b"\0\0\0hello");
        assert!(framed.capacity() >= 3 + 5 + 16);
        let framed = read_frame_with_room(&mut r, 3, 16, 5)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(framed, b"\0\0\0");
        assert!(
            read_frame_with_room(&mut r, 3, 16, 5)
                .await
                .unwrap()
                .is_none()
        );
    }
}
