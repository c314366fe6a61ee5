//! What a file's bytes say about themselves, kept in its record's `meta` (docs/SCHEMA.md,
//! "Files"): a photo's size, when it was taken and with what camera (EXIF); a song's
//! title, artist, album, track and length (ID3, Vorbis comments, MP4 atoms, through
//! `lofty`); a book's title, author and language (an EPUB's package document), and
//! whether it has a cover (which its thumbnail shows). Read once when the bytes are
//! stored, so a gallery, a player or a bookshelf lists them
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
        "application/epub+zip" if size <= MAX_WHOLE_BYTES => Kind::Book,
        _ => return None,
    };
    let _turn = vault.thumbnailer.turn().await?;
    let whole = matches!(kind, Kind::Music | Kind::Book) && size <= MAX_WHOLE_BYTES;
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
        Kind::Book => book(&bytes),
    })
    .await
    .ok()
    .flatten()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Photo,
    Music,
    Book,
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

const DC: &str = "http://purl.org/dc/elements/1.1/";
const OPF: &str = "http://www.idpf.org/2007/opf";
const CONTAINER: &str = "urn:oasis:names:tc:opendocument:xmlns:container";
/// The largest container or package document read from an EPUB.
const MAX_EPUB_XML: u64 = 1 << 20;
/// The largest cover picture read from an EPUB.
const MAX_COVER: u64 = 32 << 20;

/// Whether `bytes` are an EPUB: a ZIP whose first entry is `mimetype`, stored,
/// holding `application/epub+zip` (EPUB 3 OCF §4.3).
pub fn is_epub(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
        && bytes.get(30..58) == Some(&b"mimetypeapplication/epub+zip"[..])
}

/// An entry of `archive`, if it is at most `max` bytes once inflated (a ZIP bomb is
/// read no further than that).
fn entry(archive: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = archive.by_name(name).ok()?;
    if file.size() > max {
        return None;
    }
    let mut out = Vec::new();
    file.take(max + 1).read_to_end(&mut out).ok()?;
    (out.len() as u64 <= max).then_some(out)
}

/// An EPUB's package document and the folder its paths are relative to.
fn package(archive: &mut zip::ZipArchive<Cursor<&[u8]>>) -> Option<(String, crate::dav::Element)> {
    let container = entry(archive, "META-INF/container.xml", MAX_EPUB_XML)?;
    let container = crate::dav::read_document(&container)?;
    let path = container
        .find(CONTAINER, "rootfile")?
        .attribute("full-path")?
        .to_owned();
    let opf = crate::dav::read_document(&entry(archive, &path, MAX_EPUB_XML)?)?;
    let dir = path
        .rsplit_once('/')
        .map(|(d, _)| format!("{d}/"))
        .unwrap_or_default();
    Some((dir, opf))
}

/// The path in the archive of an EPUB's cover picture: the manifest item with the
/// `cover-image` property (EPUB 3), else the one `<meta name="cover">` names (EPUB 2).
fn cover_path(dir: &str, opf: &crate::dav::Element) -> Option<String> {
    let manifest = opf.child(OPF, "manifest")?;
    let items = || manifest.children.iter().filter(|c| c.is(OPF, "item"));
    let href = items()
        .find(|i| {
            i.attribute("properties")
                .is_some_and(|p| p.split_whitespace().any(|p| p == "cover-image"))
        })
        .or_else(|| {
            let id = opf
                .child(OPF, "metadata")?
                .children
                .iter()
                .find(|m| m.is(OPF, "meta") && m.attribute("name") == Some("cover"))?
                .attribute("content")?;
            items().find(|i| i.attribute("id") == Some(id))
        })?
        .attribute("href")?;
    let href = percent_encoding::percent_decode_str(href)
        .decode_utf8()
        .ok()?;
    Some(format!("{dir}{href}"))
}

/// `{"kind": "book", "title"?, "author"?, "language"?, "cover"}` from an EPUB's package
/// document (Dublin Core; several authors joined with `, `).
pub fn book(bytes: &[u8]) -> Option<Map<String, Value>> {
    if !is_epub(bytes) {
        return None;
    }
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).ok()?;
    let (dir, opf) = package(&mut archive)?;
    let metadata = opf.child(OPF, "metadata")?;
    let texts = |name: &str| -> Vec<String> {
        metadata
            .children
            .iter()
            .filter(|c| c.is(DC, name))
            .map(|c| c.text.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let mut meta = Map::new();
    meta.insert("kind".into(), json!("book"));
    if let Some(title) = texts("title").into_iter().next() {
        meta.insert("title".into(), json!(title));
    }
    let authors = texts("creator");
    if !authors.is_empty() {
        meta.insert("author".into(), json!(authors.join(", ")));
    }
    if let Some(language) = texts("language").into_iter().next() {
        meta.insert("language".into(), json!(language));
    }
    let cover = cover_path(&dir, &opf).is_some_and(|p| archive.by_name(&p).is_ok());
    meta.insert("cover".into(), json!(cover));
    Some(meta)
}

/// An EPUB's cover picture, for its thumbnail.
pub fn epub_cover(bytes: &[u8]) -> Option<Vec<u8>> {
    if !is_epub(bytes) {
        return None;
    }
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).ok()?;
    let (dir, opf) = package(&mut archive)?;
    let path = cover_path(&dir, &opf)?;
    entry(&mut archive, &path, MAX_COVER)
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

    /// An EPUB 3 whose package names a title, two authors, a language and a cover (a
    /// 30 x 40 PNG); the package is deflated, as books are.
    pub fn epub() -> Vec<u8> {
        use std::io::Write;
        let mut cover = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(30, 40, |x, y| {
            image::Rgb([200, (x * 8) as u8, (y * 6) as u8])
        }))
        .write_to(&mut cover, image::ImageFormat::Png)
        .unwrap();
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let deflated = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file("mimetype", stored).unwrap();
        zip.write_all(b"application/epub+zip").unwrap();
        zip.start_file("META-INF/container.xml", deflated).unwrap();
        zip.write_all(br#"<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>"#).unwrap();
        zip.start_file("OEBPS/content.opf", deflated).unwrap();
        zip.write_all(
            br#"<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/">
    <dc:identifier id="id">urn:uuid:0d1a2b3c</dc:identifier>
    <dc:title>Notes on the Analytical Engine</dc:title>
    <dc:creator>Ada Lovelace</dc:creator>
    <dc:creator>Luigi Menabrea</dc:creator>
    <dc:language>en</dc:language>
  </metadata>
  <manifest>
    <item id="c" href="images/cover%20art.png" media-type="image/png" properties="cover-image"/>
    <item id="t" href="text.xhtml" media-type="application/xhtml+xml"/>
  </manifest>
  <spine><itemref idref="t"/></spine>
</package>"#,
        )
        .unwrap();
        zip.start_file("OEBPS/images/cover art.png", stored)
            .unwrap();
        zip.write_all(cover.get_ref()).unwrap();
        zip.start_file("OEBPS/text.xhtml", deflated).unwrap();
        zip.write_all(
            b"<html xmlns=\"http://www.w3.org/1999/xhtml\"><body><p>Notes.</p></body></html>",
        )
        .unwrap();
        zip.finish().unwrap().into_inner()
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

    #[test]
    fn a_book_says_its_title_authors_language_and_cover() {
        let epub = super::samples::epub();
        assert!(is_epub(&epub));
        assert_eq!(
            Value::Object(book(&epub).expect("read")),
            json!({
                "kind": "book",
                "title": "Notes on the Analytical Engine",
                "author": "Ada Lovelace, Luigi Menabrea",
                "language": "en",
                "cover": true,
            })
        );
        let cover = epub_cover(&epub).expect("a cover");
        let picture = image::load_from_memory(&cover).unwrap();
        assert_eq!((picture.width(), picture.height()), (30, 40));
        // A package that inflates past 1 MiB (a ZIP bomb's way) is not read.
        let bomb = {
            use std::io::Write;
            let options = zip::write::SimpleFileOptions::default();
            let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
            zip.start_file(
                "mimetype",
                options.compression_method(zip::CompressionMethod::Stored),
            )
            .unwrap();
            zip.write_all(b"application/epub+zip").unwrap();
            let deflated = options.compression_method(zip::CompressionMethod::Deflated);
            zip.start_file("META-INF/container.xml", deflated).unwrap();
            zip.write_all(br#"<container xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles><rootfile full-path="p.opf"/></rootfiles></container>"#).unwrap();
            zip.start_file("p.opf", deflated).unwrap();
            zip.write_all(&vec![b' '; 4 << 20]).unwrap();
            zip.finish().unwrap().into_inner()
        };
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        assert!(is_epub(&bomb) && book(&bomb).is_none());
        // Not a book: a ZIP that is no EPUB, a damaged one.
        assert!(book(b"PK\x03\x04 not really").is_none());
        assert!(book(&epub[..epub.len() / 2]).is_none());
        assert!(epub_cover(&epub[..epub.len() / 2]).is_none());
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
