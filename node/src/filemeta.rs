//! What a file's bytes say about themselves, kept in its record's `meta` (docs/SCHEMA.md,
//! "Files"): a photo's size, when it was taken and with what camera (EXIF); a song's
//! title, artist, album, track and length (ID3, Vorbis comments, MP4 atoms, through
//! `lofty`). Read once when the bytes are stored, so a gallery or a player lists them
//! from records without opening a file; sealed like the rest of the record.
//!
//! A photo's location (EXIF GPS) is never copied into the record: it would then travel
//! to every app a grant shows the file's fields to. The bytes keep it.
//!
//! The bytes are untrusted: parsing runs on the blocking pool, two at a time (with the
//! thumbnails), reads a photo's first [`HEAD_BYTES`] only and a song whole only up to
//! [`MAX_WHOLE_BYTES`]; whatever fails or panics there gives no metadata, never a
//! failed upload.

use std::io::Cursor;
use std::sync::Arc;

use hearth_protocol::BlobId;
use image::{ImageDecoder, ImageReader};
use serde_json::{Map, Value, json};

use crate::Vault;

/// How much of a photo is read: its headers and EXIF are at its start.
pub const HEAD_BYTES: u64 = 512 << 10;
/// The largest song read whole (its length needs the whole stream in some formats).
pub const MAX_WHOLE_BYTES: u64 = 64 << 20;

/// The metadata of a stored blob of `size` bytes and `content_type`, if it is a photo
/// or a song that can be read.
pub async fn read(
    vault: &Arc<Vault>,
    blob: BlobId,
    size: u64,
    content_type: Option<&str>,
) -> Option<Map<String, Value>> {
    let kind = match content_type? {
        t if t.starts_with("image/") => Kind::Photo,
        t if t.starts_with("audio/") => Kind::Music,
        _ => return None,
    };
    let _turn = vault.thumbnailer.turn().await?;
    let whole = kind == Kind::Music && size <= MAX_WHOLE_BYTES;
    let wanted = if whole { size } else { size.min(HEAD_BYTES) };
    let mut reader = vault.blobs.open_blob(blob).ok()?;
    reader.seek(0, wanted);
    let mut bytes = Vec::with_capacity(usize::try_from(wanted).ok()?);
    while let Some(chunk) = reader.next_chunk().await {
        bytes.extend_from_slice(&chunk.ok()?);
    }
    tokio::task::spawn_blocking(move || match kind {
        Kind::Photo => photo(&bytes),
        Kind::Music => music(&bytes, whole),
    })
    .await
    .ok()
    .flatten()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Photo,
    Music,
}

/// `{"kind": "photo", "width", "height", "taken"?, "camera"?}` from a picture's start:
/// its size as shown (turned as its EXIF orientation says), when it was taken (EXIF
/// `DateTimeOriginal`, the camera's local time, with its offset when the camera wrote
/// one) and the camera (make and model).
pub fn photo(head: &[u8]) -> Option<Map<String, Value>> {
    let reader = ImageReader::new(Cursor::new(head))
        .with_guessed_format()
        .ok()?;
    reader.format()?;
    let mut decoder = reader.into_decoder().ok()?;
    let (mut width, mut height) = decoder.dimensions();
    let exif = decoder
        .exif_metadata()
        .ok()
        .flatten()
        .and_then(|raw| exif::Reader::new().read_raw(raw).ok());
    let mut meta = Map::new();
    meta.insert("kind".into(), json!("photo"));
    if let Some(exif) = &exif {
        let text = |tag: exif::Tag| -> Option<String> {
            let field = exif.get_field(tag, exif::In::PRIMARY)?;
            let exif::Value::Ascii(values) = &field.value else {
                return None;
            };
            let text = String::from_utf8_lossy(values.first()?)
                .trim_matches(char::from(0))
                .trim()
                .to_owned();
            (!text.is_empty()).then_some(text)
        };
        // Orientations 5 to 8 turn the picture a quarter: its shown sides swap.
        let turned = exif
            .get_field(exif::Tag::Orientation, exif::In::PRIMARY)
            .and_then(|f| f.value.get_uint(0))
            .is_some_and(|o| (5..=8).contains(&o));
        if turned {
            std::mem::swap(&mut width, &mut height);
        }
        if let Some(taken) = text(exif::Tag::DateTimeOriginal)
            .or_else(|| text(exif::Tag::DateTime))
            .and_then(|t| exif_time(&t, text(exif::Tag::OffsetTimeOriginal)))
        {
            meta.insert("taken".into(), json!(taken));
        }
        let make = text(exif::Tag::Make);
        let model = text(exif::Tag::Model);
        let camera = match (make, model) {
            // Most models already start with their make ("Canon EOS R5").
            (Some(make), Some(model)) if model.starts_with(&make) => Some(model),
            (Some(make), Some(model)) => Some(format!("{make} {model}")),
            (make, model) => make.or(model),
        };
        if let Some(camera) = camera {
            meta.insert("camera".into(), json!(camera));
        }
    }
    meta.insert("width".into(), json!(width));
    meta.insert("height".into(), json!(height));
    Some(meta)
}

/// EXIF's `2026:07:01 12:30:00` (and an offset `+02:00`) as `2026-07-01T12:30:00+02:00`.
fn exif_time(text: &str, offset: Option<String>) -> Option<String> {
    let at = chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y:%m:%d %H:%M:%S").ok()?;
    let mut out = at.format("%Y-%m-%dT%H:%M:%S").to_string();
    if let Some(offset) = offset
        && offset.len() == 6
        && (offset.starts_with('+') || offset.starts_with('-'))
        && offset[1..3].chars().all(|c| c.is_ascii_digit())
        && &offset[3..4] == ":"
        && offset[4..6].chars().all(|c| c.is_ascii_digit())
    {
        out.push_str(&offset);
    }
    Some(out)
}

/// `{"kind": "music", "title"?, "artist"?, "album"?, "track"?, "duration"?}` from a
/// song's tags; `duration` (seconds) only when the whole song was read.
pub fn music(bytes: &[u8], whole: bool) -> Option<Map<String, Value>> {
    use lofty::file::{AudioFile, TaggedFileExt};
    use lofty::tag::Accessor;
    let tagged = lofty::probe::Probe::new(Cursor::new(bytes))
        .guess_file_type()
        .ok()?
        .read()
        .ok()?;
    let mut meta = Map::new();
    meta.insert("kind".into(), json!("music"));
    if let Some(tag) = tagged.primary_tag().or_else(|| tagged.first_tag()) {
        for (field, value) in [
            ("title", tag.title()),
            ("artist", tag.artist()),
            ("album", tag.album()),
        ] {
            if let Some(value) = value.map(|v| v.trim().to_owned())
                && !value.is_empty()
            {
                meta.insert(field.into(), json!(value));
            }
        }
        if let Some(track) = tag.track() {
            meta.insert("track".into(), json!(track));
        }
    }
    let duration = tagged.properties().duration();
    if whole && !duration.is_zero() {
        meta.insert(
            "duration".into(),
            json!((duration.as_millis() as f64 / 1000.0 * 10.0).round() / 10.0),
        );
    }
    Some(meta)
}

/// Pictures and songs for tests (here and in the workspace's tests).
#[doc(hidden)]
pub mod samples {
    use std::io::Cursor;

    /// A small JPEG with an EXIF block: Make, Model, Orientation 6, DateTimeOriginal,
    /// OffsetTimeOriginal and a GPS pointer.
    pub fn camera_jpeg() -> Vec<u8> {
        // A sunset: warm at the top, sea below.
        let picture = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 20, |x, y| {
            if y < 12 {
                image::Rgb([240, 120 + (y * 8) as u8, 40 + x as u8])
            } else {
                image::Rgb([20, 60 + x as u8, 140 + (y * 4) as u8])
            }
        }));
        let mut jpeg = Cursor::new(Vec::new());
        picture
            .write_to(&mut jpeg, image::ImageFormat::Jpeg)
            .unwrap();
        let jpeg = jpeg.into_inner();
        // A little-endian TIFF: IFD0 (Make, Model, Orientation, ExifIFD pointer, GPS
        // pointer), the Exif IFD (DateTimeOriginal, OffsetTimeOriginal), the GPS IFD
        // (a latitude ref), then the strings.
        let mut tiff: Vec<u8> = b"II*\0\x08\0\0\0".to_vec();
        let entry = |out: &mut Vec<u8>, tag: u16, kind: u16, count: u32, value: u32| {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        };
        let ifd0 = 8u32;
        let ifd0_len = 2 + 5 * 12 + 4;
        let exif_ifd = ifd0 + ifd0_len;
        let exif_len = 2 + 2 * 12 + 4;
        let gps_ifd = exif_ifd + exif_len;
        let gps_len = 2 + 12 + 4;
        let strings = gps_ifd + gps_len;
        let make = b"Canon\0";
        let model = b"Canon EOS R5\0";
        let taken = b"2026:07:01 12:30:00\0";
        let offset = b"+02:00\0";
        let make_at = strings;
        let model_at = make_at + make.len() as u32;
        let taken_at = model_at + model.len() as u32;
        let offset_at = taken_at + taken.len() as u32;
        tiff.extend_from_slice(&5u16.to_le_bytes());
        entry(&mut tiff, 0x010F, 2, make.len() as u32, make_at);
        entry(&mut tiff, 0x0110, 2, model.len() as u32, model_at);
        entry(&mut tiff, 0x0112, 3, 1, 6);
        entry(&mut tiff, 0x8769, 4, 1, exif_ifd);
        entry(&mut tiff, 0x8825, 4, 1, gps_ifd);
        tiff.extend_from_slice(&0u32.to_le_bytes());
        tiff.extend_from_slice(&2u16.to_le_bytes());
        entry(&mut tiff, 0x9003, 2, taken.len() as u32, taken_at);
        entry(&mut tiff, 0x9011, 2, offset.len() as u32, offset_at);
        tiff.extend_from_slice(&0u32.to_le_bytes());
        tiff.extend_from_slice(&1u16.to_le_bytes());
        entry(&mut tiff, 0x0001, 2, 2, u32::from_le_bytes(*b"N\0\0\0"));
        tiff.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(tiff.len() as u32, strings);
        for s in [&make[..], &model[..], &taken[..], &offset[..]] {
            tiff.extend_from_slice(s);
        }
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&u16::try_from(app1.len() + 2).unwrap().to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::samples::camera_jpeg;
    use super::*;

    #[test]
    fn a_photo_says_when_and_with_what_it_was_taken_and_not_where() {
        let meta = photo(&camera_jpeg()).expect("read");
        assert_eq!(
            Value::Object(meta.clone()),
            json!({
                "kind": "photo",
                "width": 20,
                "height": 40,
                "taken": "2026-07-01T12:30:00+02:00",
                "camera": "Canon EOS R5",
            })
        );
        // A picture without EXIF: its size only.
        let mut png = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(image::RgbImage::new(7, 3))
            .write_to(&mut png, image::ImageFormat::Png)
            .unwrap();
        assert_eq!(
            Value::Object(photo(&png.into_inner()).unwrap()),
            json!({"kind": "photo", "width": 7, "height": 3})
        );
        assert!(photo(b"not a picture").is_none());
        assert_eq!(exif_time("2026:13:01 00:00:00", None), None);
        assert_eq!(
            exif_time("2026:01:01 00:00:00", Some("junk!!".into())).as_deref(),
            Some("2026-01-01T00:00:00")
        );
    }

    /// A WAV file with a RIFF INFO title and artist: what lofty reads, and its length.
    #[test]
    fn a_song_says_its_title_artist_and_length() {
        let samples = 8000u32; // one second of 8 kHz, 8-bit mono
        let mut info = b"INFO".to_vec();
        for (id, text) in [
            (b"INAM", &b"Clair de lune\0"[..]),
            (b"IART", &b"Debussy\0"[..]),
        ] {
            info.extend_from_slice(id);
            info.extend_from_slice(&(text.len() as u32).to_le_bytes());
            info.extend_from_slice(text);
            if text.len() % 2 == 1 {
                info.push(0);
            }
        }
        let mut riff = b"WAVE".to_vec();
        riff.extend_from_slice(b"fmt ");
        riff.extend_from_slice(&16u32.to_le_bytes());
        riff.extend_from_slice(&1u16.to_le_bytes()); // PCM
        riff.extend_from_slice(&1u16.to_le_bytes()); // mono
        riff.extend_from_slice(&8000u32.to_le_bytes());
        riff.extend_from_slice(&8000u32.to_le_bytes());
        riff.extend_from_slice(&1u16.to_le_bytes());
        riff.extend_from_slice(&8u16.to_le_bytes());
        riff.extend_from_slice(b"data");
        riff.extend_from_slice(&samples.to_le_bytes());
        riff.extend(std::iter::repeat_n(128u8, samples as usize));
        riff.extend_from_slice(b"LIST");
        riff.extend_from_slice(&(info.len() as u32).to_le_bytes());
        riff.extend_from_slice(&info);
        let mut wav = b"RIFF".to_vec();
        wav.extend_from_slice(&(riff.len() as u32).to_le_bytes());
        wav.extend_from_slice(&riff);
        let meta = music(&wav, true).expect("read");
        assert_eq!(meta["kind"], "music");
        assert_eq!(meta["title"], "Clair de lune");
        assert_eq!(meta["artist"], "Debussy");
        assert_eq!(meta["duration"], 1.0);
        assert!(music(&wav, false).unwrap().get("duration").is_none());
        assert!(music(b"not a song at all", true).is_none());
    }
}
