//! Thumbnails as a gallery and an app use them: a photo made small and upright for
//! the owner and for a grant that may read it (and for no other), the second time
//! from what was kept, never readable on disk, refused clearly for what is not a
//! picture, and gone with the photo.

use hearth_tests::*;
use reqwest::Method;

/// A 600 x 300 JPEG of noise (so its thumbnail's bytes are its own).
fn photo(seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let picture = image::RgbImage::from_fn(600, 300, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let [r, g, b, _] = state.to_le_bytes();
        image::Rgb([r, g, b])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(picture)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

fn dimensions(jpeg: &[u8]) -> (u32, u32) {
    let picture = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .expect("a JPEG comes back");
    (picture.width(), picture.height())
}

#[test]
fn a_photo_is_made_small_for_whoever_may_see_it_and_for_no_one_else() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let api = Api::new(&node);
    let beach = t.path().join("beach.jpg");
    std::fs::write(&beach, photo(1)).unwrap();
    let secret = t.path().join("secret.jpg");
    std::fs::write(&secret, photo(2)).unwrap();
    let notes = t.file("notes.txt", "not a picture");
    let blob_of = |file: &std::path::Path, folder: &str| {
        node.json(&["file", "put", file.to_str().unwrap(), folder])["blob"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let beach_blob = blob_of(&beach, "/Photos/");
    let secret_blob = blob_of(&secret, "/Private/");
    let notes_blob = blob_of(&notes, "/Photos/");

    // The owner: small, in shape, the same bytes the second time, 304 when held.
    let thumb = |path: &str, auth: &str, headers: &[(&str, &str)]| {
        let mut request = api.raw(Method::GET, path).bearer_auth(auth);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        api.send_raw(request)
    };
    let owner = node.owner_token();
    let first = thumb(
        &format!("/v1/blobs/{beach_blob}/thumbnail?size=200"),
        &owner,
        &[],
    );
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["content-type"], "image/jpeg");
    assert_eq!(dimensions(&first.body), (256, 128), "rounded up to 256");
    let again = thumb(
        &format!("/v1/blobs/{beach_blob}/thumbnail?size=256"),
        &owner,
        &[],
    );
    assert_eq!(again.body, first.body, "kept, not made again");
    let etag = first.headers["etag"].to_str().unwrap().to_owned();
    let held = thumb(
        &format!("/v1/blobs/{beach_blob}/thumbnail?size=256"),
        &owner,
        &[("If-None-Match", &etag)],
    );
    assert_eq!(held.status, 304);
    let default = thumb(&format!("/v1/blobs/{beach_blob}/thumbnail"), &owner, &[]);
    assert_eq!(dimensions(&default.body), (256, 128));

    // Wrong asks, each named.
    let (status, body) = api.send(
        api.raw(Method::GET, &format!("/v1/blobs/{notes_blob}/thumbnail"))
            .bearer_auth(&owner),
    );
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"]["code"], "not_an_image");
    let (status, body) = api.send(
        api.raw(
            Method::GET,
            &format!("/v1/blobs/{beach_blob}/thumbnail?size=5000"),
        )
        .bearer_auth(&owner),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("1024"));
    for bad in ["?size=big", "?size=-1"] {
        let (status, _) = api.send(
            api.raw(
                Method::GET,
                &format!("/v1/blobs/{beach_blob}/thumbnail{bad}"),
            )
            .bearer_auth(&owner),
        );
        assert_eq!(status, 400, "{bad}");
    }

    // A grant on /Photos: the beach, not the secret; without a token, nothing.
    let token = node.json(&[
        "grant",
        "raw",
        "--read",
        "files",
        "--where",
        "path^=/Photos",
    ])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let seen = thumb(
        &format!("/v1/view/_blobs/{beach_blob}/thumbnail?size=128"),
        &token,
        &[],
    );
    assert_eq!(seen.status, 200);
    assert_eq!(dimensions(&seen.body), (128, 64));
    let hidden = thumb(
        &format!("/v1/view/_blobs/{secret_blob}/thumbnail?size=128"),
        &token,
        &[],
    );
    assert_eq!(hidden.status, 404);
    let no_token = api.send_raw(api.raw(
        Method::GET,
        &format!("/v1/view/_blobs/{beach_blob}/thumbnail"),
    ));
    assert_eq!(no_token.status, 401);
    let secret_thumb = thumb(
        &format!("/v1/blobs/{secret_blob}/thumbnail?size=512"),
        &owner,
        &[],
    );
    assert_eq!(secret_thumb.status, 200);
    node.stop();

    // Kept sealed: no file under HOME holds any stretch of a thumbnail.
    for made in [&first.body, &seen.body, &secret_thumb.body] {
        let middle = &made[made.len() / 2..made.len() / 2 + 48];
        for file in files_under(t.path()) {
            if file.extension().is_some_and(|e| e == "jpg") {
                continue;
            }
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !contains_bytes(&bytes, middle),
                "{} holds a thumbnail",
                file.display()
            );
        }
    }

    // The photo removed (its file, then its bytes): no thumbnail of it any more.
    let node = spawn_node(t.path(), &[]);
    let api = Api::new(&node);
    node.json(&["file", "rm", "/Photos/beach.jpg"]);
    node.json(&["blob", "rm", &beach_blob]);
    let (status, _) = api.send(
        api.raw(Method::GET, &format!("/v1/blobs/{beach_blob}/thumbnail"))
            .bearer_auth(node.owner_token()),
    );
    assert_eq!(status, 404);
    node.stop();
}

/// A photo's record says when and with what camera it was taken, and its size as
/// shown, whether it came from the CLI or the file share; never where it was taken;
/// a grant that reads the field sees it; new bytes bring their own (or none).
#[test]
fn a_photo_record_says_when_and_with_what_it_was_taken_but_not_where() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let api = Api::new(&node);
    let camera = t.path().join("IMG_0001.jpg");
    std::fs::write(&camera, hearth_node::filemeta::samples::camera_jpeg()).unwrap();
    node.json(&["file", "put", camera.to_str().unwrap(), "/Photos/"]);
    let expected = serde_json::json!({
        "kind": "photo",
        "width": 20,
        "height": 40,
        "taken": "2026-07-01T12:30:00+02:00",
        "camera": "Canon EOS R5",
    });
    let info = |path: &str| {
        let (status, body) = api.send(
            api.raw(Method::GET, &format!("/v1/files{path}?info=true"))
                .bearer_auth(node.owner_token()),
        );
        assert_eq!(status, 200, "{body}");
        body
    };
    assert_eq!(info("/Photos/IMG_0001.jpg")["meta"], expected);
    // The same photo through the file share.
    let (_, password) =
        grant_app_password(&node, "phone", &["--read", "files", "--write", "files"]);
    let answer = api.send_raw(
        api.raw(Method::PUT, "/files/Photos/from-phone.jpg")
            .basic_auth("me", Some(&password))
            .body(hearth_node::filemeta::samples::camera_jpeg()),
    );
    assert_eq!(answer.status, 201);
    assert_eq!(info("/Photos/from-phone.jpg")["meta"], expected);
    // A gallery app that reads only the date sees the date.
    let token = node.json(&["grant", "raw", "--read", "files.path,files.meta.taken"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, records) = api.send(api.raw(Method::GET, "/v1/view/files").bearer_auth(&token));
    assert_eq!(status, 200, "{records}");
    let photo = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "/Photos/IMG_0001.jpg")
        .unwrap_or_else(|| panic!("{records}"));
    assert_eq!(
        photo["meta"],
        serde_json::json!({"taken": "2026-07-01T12:30:00+02:00"})
    );
    // Never where: the sample carries a GPS block; no record holds a location.
    let all = node.json(&["ls", "files"]).to_string();
    assert!(
        !all.contains("gps") && !all.contains("GPS") && !all.contains("latitude"),
        "{all}"
    );
    // New bytes that are no photo: their metadata goes with the old bytes.
    let text = t.file("IMG_0001.txt", "now a text");
    let (status, _) = api.send(
        api.raw(Method::PUT, "/v1/files/Photos/IMG_0001.jpg")
            .bearer_auth(node.owner_token())
            .header("content-type", "text/plain")
            .body(std::fs::read(&text).unwrap()),
    );
    assert_eq!(status, 200);
    assert!(info("/Photos/IMG_0001.jpg").get("meta").is_none());
    node.stop();
}

/// A book (EPUB) says its title, authors and language, and its thumbnail is its
/// cover; a grant that may read the book's record gets the cover too.
#[test]
fn a_book_says_what_it_is_and_shows_its_cover() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let api = Api::new(&node);
    let epub = t.path().join("notes.epub");
    std::fs::write(&epub, hearth_node::filemeta::samples::epub()).unwrap();
    let stored = node.json(&["file", "put", epub.to_str().unwrap(), "/Books/"]);
    let blob = stored["blob"].as_str().unwrap().to_owned();
    let (status, info) = api.send(
        api.raw(Method::GET, "/v1/files/Books/notes.epub?info=true")
            .bearer_auth(node.owner_token()),
    );
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["type"], "application/epub+zip");
    assert_eq!(
        info["meta"],
        serde_json::json!({
            "kind": "book",
            "title": "Notes on the Analytical Engine",
            "author": "Ada Lovelace, Luigi Menabrea",
            "language": "en",
            "cover": true,
        })
    );
    let cover = api.send_raw(
        api.raw(Method::GET, &format!("/v1/blobs/{blob}/thumbnail?size=128"))
            .bearer_auth(node.owner_token()),
    );
    assert_eq!(cover.status, 200);
    assert_eq!(
        dimensions(&cover.body),
        (30, 40),
        "a small cover is not enlarged"
    );
    let token = node.json(&["grant", "raw", "--read", "files", "--where", "path^=/Books"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let seen = api.send_raw(
        api.raw(Method::GET, &format!("/v1/view/_blobs/{blob}/thumbnail"))
            .bearer_auth(&token),
    );
    assert_eq!(seen.status, 200);
    assert_eq!(
        seen.body,
        api.send_raw(
            api.raw(Method::GET, &format!("/v1/blobs/{blob}/thumbnail"))
                .bearer_auth(node.owner_token()),
        )
        .body
    );
    let found = node.json(&["find", "analytical"]);
    assert_eq!(found["hits"][0]["title"], "/Books/notes.epub", "{found}");
    node.stop();
}
