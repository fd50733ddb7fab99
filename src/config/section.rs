//! Integrations' sections: top-level tables the core keeps as written and an integration reads
//! into its own types.

use std::marker::PhantomData;

use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};

/// A top-level table of the config file that an integration owns, read into the
/// integration's own type with [`super::Config::section`].
///
/// ```
/// use std::collections::BTreeMap;
/// use haloflow::config::{Config, Section};
///
/// #[derive(Default, serde::Deserialize)]
/// struct Chat {
///     #[serde(default)]
///     channels: BTreeMap<String, String>,
/// }
///
/// impl Section for Chat {
///     const TABLE: &'static str = "chat";
/// }
///
/// let config = Config::parse("[chat.channels]\nops = \"#ops\"\n").unwrap();
/// assert_eq!(config.section::<Chat>().unwrap().channels["ops"], "#ops");
/// ```
pub trait Section: DeserializeOwned + Default {
    /// The table's name, e.g. `halo`.
    const TABLE: &'static str;
}

/// Reads section `T` from the file's text, so that a type error says where it is.
pub(super) fn from_text<T: Section>(text: &str) -> Result<Option<T>, String> {
    let document = toml::Deserializer::parse(text).map_err(|e| super::located(text, &e))?;
    serde::Deserializer::deserialize_map(document, Pick::<T>(PhantomData))
        .map_err(|e| super::located(text, &e))
}

/// Deserialises one top-level table, skipping the others.
struct Pick<T>(PhantomData<T>);

impl<'de, T: Section> Visitor<'de> for Pick<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == T::TABLE {
                found = Some(map.next_value::<T>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    struct Chat {
        #[serde(default)]
        timeout_secs: u64,
    }

    impl Section for Chat {
        const TABLE: &'static str = "chat";
    }

    #[test]
    fn a_section_is_read_in_its_own_type_and_its_errors_say_where() {
        let config = Config::parse("[server]\n\n[chat]\ntimeout_secs = \"soon\"\n").unwrap();
        let error = config.section::<Chat>().unwrap_err();
        assert!(error.starts_with("line 4, column 16: "), "{error}");
        let mut config = Config::parse("[chat]\ntimeout_secs = 5\n").unwrap();
        assert_eq!(config.section::<Chat>().unwrap().timeout_secs, 5);
        config
            .edit_section(|chat: &mut Chat| chat.timeout_secs = 9)
            .unwrap();
        assert_eq!(config.section::<Chat>().unwrap().timeout_secs, 9);
        assert_eq!(Config::default().section::<Chat>().unwrap().timeout_secs, 0);
    }
}
