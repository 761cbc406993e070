//! A report as a list of blocks, written as `report.md` (images linked) and a self-contained
//! `report.html` (images embedded), so a run folder can be read in a browser or on a forge.
//! Every document states the intended use ([`super::INTENDED_USE`]) right under its title.
use std::path::{Path, PathBuf};

use base64::Engine;

use crate::error::{Result, write_atomic};

#[derive(Clone, Debug)]
pub enum Block {
    Heading(usize, String),
    Paragraph(String),
    Table { header: Vec<String>, rows: Vec<Vec<String>> },
    /// A PNG, by path relative to the report's folder.
    Image { path: PathBuf, caption: String },
    Code(String),
}

#[derive(Default)]
pub struct Document {
    pub title: String,
    pub blocks: Vec<Block>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Document {
    pub fn new(title: impl Into<String>) -> Self {
        Document { title: title.into(), blocks: Vec::new() }
    }

    pub fn h(&mut self, level: usize, text: impl Into<String>) -> &mut Self {
        self.blocks.push(Block::Heading(level, text.into()));
        self
    }

    pub fn p(&mut self, text: impl Into<String>) -> &mut Self {
        self.blocks.push(Block::Paragraph(text.into()));
        self
    }

    pub fn table(&mut self, header: Vec<String>, rows: Vec<Vec<String>>) -> &mut Self {
        self.blocks.push(Block::Table { header, rows });
        self
    }

    pub fn image(&mut self, path: impl Into<PathBuf>, caption: impl Into<String>) -> &mut Self {
        self.blocks.push(Block::Image { path: path.into(), caption: caption.into() });
        self
    }

    pub fn code(&mut self, text: impl Into<String>) -> &mut Self {
        self.blocks.push(Block::Code(text.into()));
        self
    }

    pub fn to_markdown(&self) -> String {
        let mut s = format!("# {}\n\n**{}**\n\n", self.title, super::INTENDED_USE);
        for b in &self.blocks {
            match b {
                Block::Heading(l, t) => s += &format!("{} {t}\n\n", "#".repeat(l + 1)),
                Block::Paragraph(t) => s += &format!("{t}\n\n"),
                Block::Table { header, rows } => {
                    s += &format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len()));
                    for r in rows {
                        s += &format!("| {} |\n", r.join(" | "));
                    }
                    s += "\n";
                }
                Block::Image { path, caption } => s += &format!("![{caption}]({})\n\n*{caption}*\n\n", path.display()),
                Block::Code(t) => s += &format!("```\n{t}\n```\n\n"),
            }
        }
        s
    }

    /// HTML with every image inlined; `dir` is the folder image paths are relative to.
    pub fn to_html(&self, dir: &Path) -> Result<String> {
        let mut s = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>\
             body{{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}}\
             table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}\
             th{{background:#f0f4f8}}td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}\
             figure{{margin:1em 0}}figcaption{{color:#555;font-size:0.9em}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}\
             </style></head><body><h1>{}</h1>\n<p><strong>{}</strong></p>\n",
            esc(&self.title),
            esc(&self.title),
            esc(super::INTENDED_USE)
        );
        for b in &self.blocks {
            match b {
                Block::Heading(l, t) => s += &format!("<h{0}>{1}</h{0}>\n", l + 1, esc(t)),
                Block::Paragraph(t) => s += &format!("<p>{}</p>\n", esc(t)),
                Block::Table { header, rows } => {
                    s += "<table><tr>";
                    for h in header {
                        s += &format!("<th>{}</th>", esc(h));
                    }
                    s += "</tr>\n";
                    for r in rows {
                        s += "<tr>";
                        for c in r {
                            s += &format!("<td>{}</td>", esc(c));
                        }
                        s += "</tr>\n";
                    }
                    s += "</table>\n";
                }
                Block::Image { path, caption } => {
                    let full = dir.join(path);
                    let bytes = crate::files::read_image(&full)?;
                    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                    s += &format!(
                        "<figure><img src=\"data:image/png;base64,{b64}\" alt=\"{0}\"><figcaption>{0}</figcaption></figure>\n",
                        esc(caption)
                    );
                }
                Block::Code(t) => s += &format!("<pre>{}</pre>\n", esc(t)),
            }
        }
        s += "</body></html>\n";
        Ok(s)
    }

    /// Writes `report.md` and `report.html` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let (md, html) = (dir.join("report.md"), dir.join("report.html"));
        write_atomic(&md, self.to_markdown().as_bytes())?;
        write_atomic(&html, self.to_html(dir)?.as_bytes())?;
        Ok((md, html))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_inlines_images_and_escapes_text() {
        let d = tempfile::tempdir().unwrap();
        image::RgbImage::new(2, 2).save(d.path().join("a.png")).unwrap();
        let mut doc = Document::new("Run <1>");
        doc.h(1, "Metrics").table(vec!["a".into()], vec![vec!["<b>".into()]]).image("a.png", "fig");
        let (md, html) = doc.write(d.path()).unwrap();
        let html = std::fs::read_to_string(html).unwrap();
        assert!(html.contains("data:image/png;base64,") && html.contains("&lt;b&gt;") && !html.contains("<b>"));
        let md = std::fs::read_to_string(md).unwrap();
        assert!(md.contains("![fig](a.png)"));
        assert!(md.contains(crate::report::INTENDED_USE) && html.contains("Research use only; not for diagnosis."));
    }
}
