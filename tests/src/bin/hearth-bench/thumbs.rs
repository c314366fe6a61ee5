//! Thumbnails of a 24-megapixel photo: the first (the node reads the sealed blob,
//! decodes, turns, shrinks, encodes and seals the result) against the same decode,
//! shrink and encode of the same JPEG in this process (what any photo app pays); and
//! the second, read from what the node kept, against the first.

use std::time::Instant;

use anyhow::Context;

use crate::Opts;
use crate::nodes::{http_client, owner_token, start, upload_blob};
use crate::report::{Report, fig};

/// A 6000 x 4000 photo-like JPEG: smooth light with grain (a noise-only picture would
/// be far larger than a camera's file).
fn photo() -> anyhow::Result<Vec<u8>> {
    let mut state: u32 = 0x9e37_79b9;
    let picture = image::RgbImage::from_fn(6000, 4000, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let grain = (state & 0x1f) as u8;
        image::Rgb([
            ((x * 255 / 6000) as u8).saturating_add(grain),
            ((y * 255 / 4000) as u8).saturating_add(grain),
            (((x + y) * 255 / 10_000) as u8).saturating_add(grain),
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(picture).write_to(&mut out, image::ImageFormat::Jpeg)?;
    Ok(out.into_inner())
}

pub async fn thumbnails(opts: &Opts) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir_in(&opts.dir)?;
    let jpeg = photo()?;
    let node = start(dir.path(), false, Vec::new()).await?;
    let http = http_client()?;
    let blob = upload_blob(&http, &node, jpeg.clone().into()).await?;
    let url = format!(
        "http://{}/v1/blobs/{blob}/thumbnail?size=256",
        node.api_addr()
    );
    let token = owner_token(&node)?;
    let get = || async {
        let started = Instant::now();
        let bytes = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        anyhow::Ok((started.elapsed(), bytes))
    };
    let (first, made) = get().await?;
    let mut again = Vec::new();
    for _ in 0..20 {
        let (took, bytes) = get().await?;
        anyhow::ensure!(bytes == made, "the kept thumbnail differs from the first");
        again.push(took);
    }
    again.sort();
    let cached = again[again.len() / 2];
    // The same work in this process, from the bytes in memory.
    let source = jpeg.clone();
    let (baseline, _) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let small = hearth_node::thumbnails::make(&source, 256);
        (started.elapsed(), small)
    })
    .await
    .context("the baseline task")?;
    node.shutdown().await?;

    let mut report = Report::new(
        "thumbnail of a 24 MP JPEG",
        "first <= 1.5x decoding, shrinking and encoding it in process; kept <= 0.05x the first",
    );
    report.figures = vec![
        fig(
            "first thumbnail, 256 px (HTTP)",
            first.as_secs_f64() * 1000.0,
            "ms",
        ),
        fig(
            "kept thumbnail, median of 20 (HTTP)",
            cached.as_secs_f64() * 1000.0,
            "ms",
        ),
        fig("thumbnail size", made.len() as f64 / 1024.0, "KiB"),
    ];
    report.baseline = vec![fig(
        "decode + shrink + encode in process (image 0.25)",
        baseline.as_secs_f64() * 1000.0,
        "ms",
    )];
    let first_ratio = first.as_secs_f64() / baseline.as_secs_f64();
    let kept_ratio = cached.as_secs_f64() / first.as_secs_f64();
    report.ratio = Some(("first / in process".into(), first_ratio));
    report.notes.push(format!(
        "source {:.1} MiB; kept / first = {kept_ratio:.4}",
        jpeg.len() as f64 / (1 << 20) as f64
    ));
    report.judge(&[first_ratio <= 1.5, kept_ratio <= 0.05]);
    Ok(report)
}
