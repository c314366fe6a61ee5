//! Thumbnails of photos (and of books: their cover): a JPEG, PNG or WebP blob made small (its longest side one of
//! [`SIZES`]), turned as its EXIF orientation says, encoded as JPEG. Made once and
//! kept in this device's sealed tree [`THUMBNAILS_TREE`] (nothing readable at rest;
//! never synced: each device makes its own), so the second request reads a few KiB
//! instead of decoding megapixels; dropped with the blob ([`Blobs::drop_removed`]).
//!
//! Decoding is untrusted work: the bytes are whatever an app uploaded. It runs on the
//! blocking pool, two at a time (a gallery asks for dozens at once; the node has other
//! work), under `image`'s limits (dimensions and memory), and a source larger than
//! [`MAX_SOURCE_BYTES`] is refused before it is read.
//!
//! [`Blobs::drop_removed`]: hearth_core::blobs::Blobs::drop_removed

use std::io::Cursor;
use std::sync::Arc;

use hearth_core::blobs::{BlobError, THUMBNAIL_SIZES, THUMBNAILS_TREE, thumbnail_key};
use hearth_protocol::BlobId;
use hearth_protocol::api::ErrorCode;
use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::Vault;
use crate::api::ApiError;

/// The content types of the pictures thumbnails are made of.
pub const PICTURES: [&str; 3] = ["image/jpeg", "image/png", "image/webp"];
/// The sizes asked for are rounded up to one of these.
pub const SIZES: [u32; 4] = THUMBNAIL_SIZES;
/// The size when none is asked for.
pub const DEFAULT_SIZE: u32 = 256;
/// The largest picture a thumbnail is made of (a 100-megapixel camera's JPEG is
/// about 60 MB).
pub const MAX_SOURCE_BYTES: u64 = 128 << 20;
/// The largest side a picture may have (wider is refused before it is decoded).
const MAX_SIDE: u32 = 30_000;
/// What decoding one picture may allocate.
const MAX_ALLOC: u64 = 1 << 30;
/// Thumbnails made at once.
const AT_ONCE: usize = 2;

/// Thumbnails made at once, across every request.
pub struct Thumbnailer(tokio::sync::Semaphore);

impl Thumbnailer {
    /// A turn at untrusted media work (a thumbnail, a file's metadata); `None` only if
    /// the node is shutting down.
    pub async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.0.acquire().await.ok()
    }
}

impl Default for Thumbnailer {
    fn default() -> Self {
        Thumbnailer(tokio::sync::Semaphore::new(AT_ONCE))
    }
}

/// Why there is no thumbnail.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("{0}")]
    NotAnImage(String),
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("{0}")]
    Internal(String),
}

impl From<ThumbnailError> for ApiError {
    fn from(e: ThumbnailError) -> Self {
        match e {
            ThumbnailError::NotAnImage(m) => ApiError::new(ErrorCode::NotAnImage, m),
            ThumbnailError::TooLarge(m) => ApiError::new(ErrorCode::TooLarge, m),
            ThumbnailError::Blob(e) => e.into(),
            ThumbnailError::Internal(m) => ApiError::new(ErrorCode::Internal, m),
        }
    }
}

/// The size to make for `asked`: the smallest of [`SIZES`] at least as large.
pub fn size_for(asked: Option<u32>) -> Result<u32, String> {
    let Some(asked) = asked else {
        return Ok(DEFAULT_SIZE);
    };
    SIZES
        .iter()
        .copied()
        .find(|&s| s >= asked.max(1))
        .ok_or_else(|| {
            format!(
                "a thumbnail is at most {} pixels on its longest side, not {asked}",
                SIZES[SIZES.len() - 1]
            )
        })
}

/// The thumbnail of `blob` in `size` (one of [`SIZES`]): kept, or made and kept.
pub async fn thumbnail(
    vault: &Arc<Vault>,
    blob: BlobId,
    size: u32,
) -> Result<Vec<u8>, ThumbnailError> {
    let store = vault.store.clone();
    let key = thumbnail_key(&store, &blob, size);
    let tree = store
        .tree(THUMBNAILS_TREE)
        .map_err(|e| ThumbnailError::Internal(e.to_string()))?;
    if let Some(kept) = tree
        .get(&key)
        .map_err(|e| ThumbnailError::Internal(e.to_string()))?
    {
        return Ok(kept.to_vec());
    }
    let _turn = vault
        .thumbnailer
        .turn()
        .await
        .ok_or_else(|| ThumbnailError::Internal("the node is stopping".into()))?;
    // Another request may have made it while this one waited.
    if let Some(kept) = tree
        .get(&key)
        .map_err(|e| ThumbnailError::Internal(e.to_string()))?
    {
        return Ok(kept.to_vec());
    }
    let mut reader = vault.blobs.open_blob(blob)?;
    if reader.size() > MAX_SOURCE_BYTES {
        return Err(ThumbnailError::TooLarge(format!(
            "blob {blob} is {} bytes: thumbnails are made of pictures up to {} MiB",
            reader.size(),
            MAX_SOURCE_BYTES >> 20
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(reader.size()).unwrap_or(0));
    while let Some(chunk) = reader.next_chunk().await {
        bytes.extend_from_slice(&chunk?);
    }
    let made = tokio::task::spawn_blocking(move || {
        // A book's thumbnail is its cover's.
        if crate::filemeta::is_epub(&bytes) {
            let cover = crate::filemeta::epub_cover(&bytes).ok_or_else(|| {
                ThumbnailError::NotAnImage("an EPUB without a cover picture".into())
            })?;
            return make(&cover, size);
        }
        make(&bytes, size)
    })
    .await
    .map_err(|e| ThumbnailError::Internal(format!("the thumbnail task failed: {e}")))?
    .map_err(|e| match e {
        ThumbnailError::NotAnImage(m) => ThumbnailError::NotAnImage(format!("blob {blob}: {m}")),
        other => other,
    })?;
    tree.insert(&key, &made)
        .map_err(|e| ThumbnailError::Internal(e.to_string()))?;
    Ok(made)
}

/// A JPEG of the picture in `bytes`, its longest side `size` pixels at most (a
/// smaller picture is not enlarged), turned upright.
pub fn make(bytes: &[u8], size: u32) -> Result<Vec<u8>, ThumbnailError> {
    let not_an_image = |what: String| ThumbnailError::NotAnImage(what);
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ThumbnailError::Internal(e.to_string()))?;
    let format = reader.format().ok_or_else(|| {
        not_an_image("not a picture this node reads (JPEG, PNG, WebP)".to_owned())
    })?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Unsupported(_) => not_an_image(format!(
            "a {format:?} picture, which this node does not read (JPEG, PNG, WebP)"
        )),
        image::ImageError::Limits(_) => ThumbnailError::TooLarge(format!(
            "the picture is larger than {MAX_SIDE} pixels a side or needs over {} MiB to read",
            MAX_ALLOC >> 20
        )),
        other => not_an_image(format!("the picture cannot be read: {other}")),
    })?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut picture = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(_) => ThumbnailError::TooLarge(format!(
            "the picture needs over {} MiB to read",
            MAX_ALLOC >> 20
        )),
        other => not_an_image(format!("the picture cannot be read: {other}")),
    })?;
    picture.apply_orientation(orientation);
    let small = if picture.width().max(picture.height()) > size {
        picture.thumbnail(size, size)
    } else {
        picture
    };
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 82);
    small
        .to_rgb8()
        .write_with_encoder(encoder)
        .map_err(|e| ThumbnailError::Internal(format!("cannot encode the thumbnail: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(picture: &DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        picture.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// A picture 40 wide and 20 high: its left half red, its right half blue.
    fn wide() -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        }))
    }

    fn decoded(jpeg: &[u8]) -> image::RgbImage {
        image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
            .unwrap()
            .to_rgb8()
    }

    #[test]
    fn pictures_are_made_small_and_kept_in_shape() {
        for format in [
            image::ImageFormat::Png,
            image::ImageFormat::Jpeg,
            image::ImageFormat::WebP,
        ] {
            let thumb = decoded(&make(&encoded(&wide(), format), 16).unwrap());
            assert_eq!(thumb.dimensions(), (16, 8), "{format:?}");
            // Not enlarged.
            let same = decoded(&make(&encoded(&wide(), format), 128).unwrap());
            assert_eq!(same.dimensions(), (40, 20), "{format:?}");
        }
    }

    /// A JPEG whose EXIF says "turn 90° clockwise to show" comes out upright: tall,
    /// red on top.
    #[test]
    fn the_exif_orientation_is_applied() {
        let jpeg = encoded(&wide(), image::ImageFormat::Jpeg);
        // An APP1 segment with a little-endian TIFF header and one IFD entry:
        // Orientation (0x0112), SHORT, 1 value, 6 (rotate 90° clockwise).
        let mut tiff = b"II*\0\x08\0\0\0".to_vec();
        tiff.extend_from_slice(&1u16.to_le_bytes());
        tiff.extend_from_slice(&0x0112u16.to_le_bytes());
        tiff.extend_from_slice(&3u16.to_le_bytes());
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&6u16.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_le_bytes());
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut with_exif = jpeg[..2].to_vec();
        with_exif.extend_from_slice(&[0xFF, 0xE1]);
        with_exif.extend_from_slice(&u16::try_from(app1.len() + 2).unwrap().to_be_bytes());
        with_exif.extend_from_slice(&app1);
        with_exif.extend_from_slice(&jpeg[2..]);
        let thumb = decoded(&make(&with_exif, 128).unwrap());
        assert_eq!(thumb.dimensions(), (20, 40));
        let top = thumb.get_pixel(10, 5);
        let bottom = thumb.get_pixel(10, 35);
        assert!(top[0] > 200 && top[2] < 60, "red on top: {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "blue below: {bottom:?}");
    }

    #[test]
    fn what_is_not_a_picture_is_named_and_a_bomb_is_refused() {
        assert!(matches!(
            make(b"%PDF-1.7 not a picture", 128),
            Err(ThumbnailError::NotAnImage(_))
        ));
        // A JPEG whose frame header claims 60,000 x 60,000 pixels (3.6 gigapixels):
        // refused before a pixel is decoded.
        let mut bomb = encoded(&wide(), image::ImageFormat::Jpeg);
        let sof = bomb
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("a baseline frame header");
        bomb[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
        bomb[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
        assert!(
            matches!(make(&bomb, 128), Err(ThumbnailError::TooLarge(_))),
            "{:?}",
            make(&bomb, 128).map(|t| t.len())
        );
        // A damaged picture is an answer (an error or what could be read), never a
        // panic.
        let jpeg = encoded(&wide(), image::ImageFormat::Jpeg);
        let _ = make(&jpeg[..jpeg.len() / 3], 128);
    }

    #[test]
    fn sizes_round_up_and_have_a_ceiling() {
        assert_eq!(size_for(None), Ok(DEFAULT_SIZE));
        assert_eq!(size_for(Some(0)), Ok(128));
        assert_eq!(size_for(Some(200)), Ok(256));
        assert_eq!(size_for(Some(1024)), Ok(1024));
        assert!(size_for(Some(1025)).is_err());
    }
}
