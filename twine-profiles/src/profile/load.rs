//! Reading profiles: text in one of three formats, files by extension, and inheritance.

use std::collections::btree_map::Entry;
use std::path::{Path, PathBuf};

use super::{Format, Profile, ProfileError};
use crate::key::FileName;

impl Format {
    /// The format a file name's extension stands for.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "toml" => Some(Format::Toml),
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// The extensions a parent is looked up with, in this order.
const EXTENSIONS: [&str; 4] = ["toml", "yaml", "yml", "json"];

impl Profile {
    /// Reads a profile in `format` from `text`. `inherits` is kept as written: only
    /// [`Profile::load`] knows where parents live.
    pub fn from_str(text: &str, format: Format) -> Result<Profile, ProfileError> {
        parse(text, format, None)
    }

    /// Reads a profile file (format by extension) and merges its parents: each name in
    /// `inherits` is a sibling `NAME.{toml,yaml,yml,json}`, merged left to right, then the
    /// child on top. The result is flat (`inherits` empty) and named (the file stem when
    /// the file gives no name).
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let mut chain = Vec::new();
        let mut profile = load_inner(path, &mut chain)?;
        if profile.name.is_none() {
            profile.name = stem(path);
        }
        Ok(profile)
    }

    /// Lays `child` over `self`: the child's scalars replace, its map entries replace by
    /// key, its drop-ins and networkd files replace by name.
    fn merge(&mut self, child: Profile) {
        let Profile {
            name,
            inherits: _,
            on_missing_key,
            allow_reboot,
            sysctl,
            hugepages,
            thp,
            cmdline,
            cpu,
            sysfs,
            drop_in,
            networkd,
            cgroup2,
        } = child;
        self.name = name;
        self.on_missing_key = on_missing_key.or(self.on_missing_key);
        self.allow_reboot = allow_reboot.or(self.allow_reboot);
        self.sysctl.extend(sysctl);
        let h = &mut self.hugepages;
        h.count_2m = hugepages.count_2m.or(h.count_2m);
        h.per_node_2m.extend(hugepages.per_node_2m);
        h.count_1g = hugepages.count_1g.or(h.count_1g);
        if h.count_1g.is_some() {
            // count_1g owns these arguments; a parent's own values would conflict.
            self.cmdline
                .retain(|k, _| !matches!(k.to_string().as_str(), "hugepagesz" | "hugepages"));
        }
        self.thp.enabled = thp.enabled.or(self.thp.enabled);
        self.thp.defrag = thp.defrag.or(self.thp.defrag);
        self.cmdline.extend(cmdline);
        self.cpu.governor = cpu.governor.or(self.cpu.governor.take());
        self.sysfs.extend(sysfs);
        for d in drop_in {
            match self.drop_in.iter_mut().find(|p| p.setting() == d.setting()) {
                Some(slot) => *slot = d,
                None => self.drop_in.push(d),
            }
        }
        for n in networkd {
            match self.networkd.iter_mut().find(|p| p.name == n.name) {
                Some(slot) => *slot = n,
                None => self.networkd.push(n),
            }
        }
        for (cgroup, controllers) in cgroup2 {
            match self.cgroup2.entry(cgroup) {
                Entry::Occupied(mut e) => *e.get_mut() = controllers,
                Entry::Vacant(e) => {
                    e.insert(controllers);
                }
            }
        }
    }
}

fn stem(path: &Path) -> Option<String> {
    path.file_stem().map(|s| s.to_string_lossy().into_owned())
}

fn load_inner(path: &Path, chain: &mut Vec<String>) -> Result<Profile, ProfileError> {
    let format = Format::from_path(path).ok_or_else(|| ProfileError::UnknownFormat {
        path: path.to_owned(),
    })?;
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let child = parse(&text, format, Some(path))?;
    chain.push(stem(path).unwrap_or_default());
    let mut merged = Profile::default();
    for parent in &child.inherits {
        // A parent is a plain name: the same alphabet as a file name, no '/' or "..".
        let name_check = FileName::drop_in(&format!("{parent}.conf"));
        if let Err(source) = name_check {
            return Err(ProfileError::BadParent {
                path: path.to_owned(),
                source: crate::key::KeyError {
                    value: parent.clone(),
                    ..source
                },
            });
        }
        if let Some(at) = chain.iter().position(|c| c == parent) {
            let mut cycle = chain[at..].to_vec();
            cycle.push(parent.clone());
            return Err(ProfileError::Cycle {
                path: path.to_owned(),
                chain: cycle,
            });
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let file = EXTENSIONS
            .iter()
            .map(|ext| dir.join(format!("{parent}.{ext}")))
            .find(|p| p.is_file())
            .ok_or_else(|| ProfileError::MissingParent {
                path: path.to_owned(),
                name: parent.clone(),
            })?;
        let parent_profile = load_inner(&file, chain)?;
        merged.merge(parent_profile);
    }
    chain.pop();
    merged.merge(child);
    merged.inherits.clear();
    merged.check(Some(&path.to_owned()))?;
    Ok(merged)
}

fn parse(text: &str, format: Format, file: Option<&Path>) -> Result<Profile, ProfileError> {
    let file_buf = file.map(PathBuf::from);
    let syntax = |field: &str, error: &dyn std::fmt::Display| syntax(&file_buf, field, error);
    let profile: Profile = match format {
        Format::Toml => {
            let de = toml::Deserializer::parse(text).map_err(|e| syntax(".", &e))?;
            from_deserializer(de, &file_buf)?
        }
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let p = from_deserializer(&mut de, &file_buf)?;
            de.end().map_err(|e| syntax(".", &e))?;
            p
        }
        Format::Yaml => from_deserializer(serde_norway::Deserializer::from_str(text), &file_buf)?,
    };
    profile.check(file_buf.as_ref())?;
    Ok(profile)
}

fn from_deserializer<'de, D>(de: D, file: &Option<PathBuf>) -> Result<Profile, ProfileError>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
{
    serde_path_to_error::deserialize(de).map_err(|e| syntax(file, &e.path().to_string(), e.inner()))
}

fn syntax(file: &Option<PathBuf>, field: &str, error: &dyn std::fmt::Display) -> ProfileError {
    // Parser messages may span lines (TOML quotes the source); keep one line per problem.
    let message = error
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    ProfileError::Syntax {
        file: file.clone(),
        field: field.to_owned(),
        message,
    }
}
