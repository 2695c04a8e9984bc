//! The anime the simulator starts from: a real catalog compiled into the
//! binary (`catalog/anime.csv`, MyAnimeList data of about April 2024; see
//! `catalog/README.md`), or a user's own CSV or JSON file.
//!
//! Columns (CSV header, or JSON object keys): `malId`, `title`, `score`,
//! `members`, and optionally `type`, `year` and `estimated`. `estimated`
//! (`true`/`false`, `false` when absent or empty) marks a row whose figures
//! are not from the source snapshot but a best guess, so the built-in catalog
//! says which of its numbers are real without the simulator treating them
//! differently.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::event::MAX_TITLE_CHARS;

const BUILTIN: &str = include_str!("catalog/anime.csv");

/// One anime of the catalog.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Anime {
    /// MyAnimeList id.
    pub mal_id: i32,
    /// MyAnimeList's main title.
    pub title: String,
    /// Score, 0–10.
    pub score: f64,
    /// Member count.
    pub members: i64,
    /// TV, Movie, OVA, ONA or Special.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Year it started airing.
    #[serde(default)]
    pub year: Option<i32>,
    /// The figures are a best guess, not from the catalog's source.
    #[serde(default, deserialize_with = "flag")]
    pub estimated: bool,
}

/// `true`/`false` (any case), or empty/null for `false`: what spreadsheets and
/// hand-written JSON give for a yes/no column.
fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    struct Flag;

    impl Visitor<'_> for Flag {
        type Value = bool;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("true or false")
        }

        fn visit_bool<E: de::Error>(self, value: bool) -> Result<bool, E> {
            Ok(value)
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<bool, E> {
            match value.trim() {
                "" => Ok(false),
                v if v.eq_ignore_ascii_case("true") => Ok(true),
                v if v.eq_ignore_ascii_case("false") => Ok(false),
                _ => Err(E::invalid_value(de::Unexpected::Str(value), &self)),
            }
        }

        fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_none<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }
    }

    deserializer.deserialize_any(Flag)
}

/// Errors loading a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("catalog {path}: {reason}")]
    Parse { path: String, reason: String },
}

/// A validated, non-empty list of anime with unique ids.
#[derive(Debug, Clone)]
pub struct Catalog {
    anime: Vec<Anime>,
}

impl Catalog {
    /// The catalog shipped inside the binary.
    pub fn builtin() -> Result<Catalog, CatalogError> {
        Self::from_csv("built-in catalog", BUILTIN)
    }

    /// Loads a `.json` file (an array of objects) or a CSV file (anything else).
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: name.clone(),
            source,
        })?;
        let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"))
            || text.trim_start().starts_with('[');
        if is_json {
            let anime: Vec<Anime> = serde_json::from_str(&text).map_err(|e| CatalogError::Parse {
                path: name.clone(),
                reason: e.to_string(),
            })?;
            Self::validated(&name, anime)
        } else {
            Self::from_csv(&name, &text)
        }
    }

    fn from_csv(name: &str, text: &str) -> Result<Catalog, CatalogError> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let anime = reader
            .deserialize()
            .collect::<Result<Vec<Anime>, _>>()
            .map_err(|e| CatalogError::Parse {
                path: name.to_owned(),
                reason: e.to_string(),
            })?;
        Self::validated(name, anime)
    }

    fn validated(name: &str, anime: Vec<Anime>) -> Result<Catalog, CatalogError> {
        let fail = |reason: String| CatalogError::Parse {
            path: name.to_owned(),
            reason,
        };
        if anime.is_empty() {
            return Err(fail("no anime in it".into()));
        }
        let mut seen = HashSet::new();
        for a in &anime {
            let chars = a.title.chars().count();
            if a.mal_id < 1 {
                return Err(fail(format!("malId {} must be ≥ 1", a.mal_id)));
            }
            if !seen.insert(a.mal_id) {
                return Err(fail(format!("malId {} appears twice", a.mal_id)));
            }
            if a.title.trim().is_empty() || chars > MAX_TITLE_CHARS {
                return Err(fail(format!(
                    "malId {}: title must be 1 to {MAX_TITLE_CHARS} characters",
                    a.mal_id
                )));
            }
            if !(0.0..=10.0).contains(&a.score) {
                return Err(fail(format!(
                    "malId {}: score {} must be from 0 to 10",
                    a.mal_id, a.score
                )));
            }
            if a.members < 0 {
                return Err(fail(format!("malId {}: members must be ≥ 0", a.mal_id)));
            }
        }
        Ok(Catalog { anime })
    }

    /// The anime, in file order.
    pub fn anime(&self) -> &[Anime] {
        &self.anime
    }

    /// Looks up one anime.
    pub fn get(&self, mal_id: i32) -> Option<&Anime> {
        self.anime.iter().find(|a| a.mal_id == mal_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_is_large_and_right() {
        let catalog = Catalog::builtin().unwrap();
        assert!(catalog.anime().len() >= 200, "{}", catalog.anime().len());
        for (id, title) in [
            (1, "Cowboy Bebop"),
            (5114, "Fullmetal Alchemist: Brotherhood"),
            (9253, "Steins;Gate"),
            (16498, "Shingeki no Kyojin"),
            (1535, "Death Note"),
        ] {
            assert_eq!(catalog.get(id).map(|a| a.title.as_str()), Some(title));
        }
        assert!(
            catalog
                .anime()
                .iter()
                .all(|a| a.kind.is_some() && a.year.is_some())
        );
    }

    #[test]
    fn builtin_catalog_marks_its_estimated_rows() {
        let catalog = Catalog::builtin().unwrap();
        let mut estimated: Vec<i32> = catalog
            .anime()
            .iter()
            .filter(|a| a.estimated)
            .map(|a| a.mal_id)
            .collect();
        estimated.sort_unstable();
        // Listed, with the reason for each, in catalog/README.md.
        assert_eq!(
            estimated,
            [5, 225, 8074, 21881, 27899, 34566, 36511, 57334, 58567]
        );
        assert_eq!(catalog.get(1).map(|a| a.estimated), Some(false));
    }

    #[test]
    fn user_catalog_json_and_csv() {
        let dir = std::env::temp_dir().join(format!("catlog-catalog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("mine.json");
        std::fs::write(&json, r#"[{"malId":7,"title":"Mine","score":7.1,"members":10}]"#).unwrap();
        assert_eq!(Catalog::load(&json).unwrap().anime()[0].title, "Mine");
        let csv = dir.join("mine.csv");
        std::fs::write(&csv, "malId,title,score,members\n8,\"Yours, too\",6.5,99\n").unwrap();
        let yours = Catalog::load(&csv).unwrap();
        assert_eq!(yours.anime()[0].title, "Yours, too");
        assert!(
            !yours.anime()[0].estimated,
            "no estimated column means not estimated"
        );
        std::fs::write(&csv, "malId,title,score,members\n8,A,11,99\n").unwrap();
        assert!(Catalog::load(&csv).unwrap_err().to_string().contains("score"));
        std::fs::write(&csv, "malId,title,score,members\n").unwrap();
        assert!(Catalog::load(&csv).unwrap_err().to_string().contains("no anime"));
        assert!(Catalog::load(&dir.join("missing.csv")).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn estimated_column_parses_in_csv_and_json() {
        let dir = std::env::temp_dir().join(format!("catlog-estimated-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let flags = |catalog: Catalog| -> Vec<bool> { catalog.anime().iter().map(|a| a.estimated).collect() };

        let csv = dir.join("mine.csv");
        std::fs::write(
            &csv,
            "malId,title,score,members,type,year,estimated\n\
             1,A,7,10,TV,2001,true\n2,B,7,10,TV,2001,false\n3,C,7,10,,,\n4,D,7,10,TV,2001,TRUE\n",
        )
        .unwrap();
        assert_eq!(flags(Catalog::load(&csv).unwrap()), [true, false, false, true]);
        std::fs::write(&csv, "malId,title,score,members,estimated\n1,A,7,10,yes\n").unwrap();
        let error = Catalog::load(&csv).unwrap_err().to_string();
        assert!(error.contains("true or false"), "{error}");

        let json = dir.join("mine.json");
        std::fs::write(
            &json,
            r#"[{"malId":1,"title":"A","score":7,"members":10,"estimated":true},
                {"malId":2,"title":"B","score":7,"members":10,"estimated":false},
                {"malId":3,"title":"C","score":7,"members":10},
                {"malId":4,"title":"D","score":7,"members":10,"estimated":null}]"#,
        )
        .unwrap();
        assert_eq!(flags(Catalog::load(&json).unwrap()), [true, false, false, false]);
        std::fs::write(
            &json,
            r#"[{"malId":1,"title":"A","score":7,"members":10,"estimated":1}]"#,
        )
        .unwrap();
        assert!(Catalog::load(&json).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
