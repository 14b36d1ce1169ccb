//! The region catalog: one JSON file per region under `regions/`, read by the
//! node and by Terraform (`jsondecode(file(...))`) without conversion.
//! Schema: `docs/regions.md`. [`check_catalog`] is `meridian regions check`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Files larger than this are refused (a region file is a few hundred bytes).
pub const REGION_FILE_MAX_BYTES: u64 = 64 * 1024;
/// Regions in one catalog.
pub const REGIONS_MAX: usize = 256;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
    pub display_name: String,
    /// Latency group: regions in one group are neighbours for ticket offers.
    pub latency_group: String,
    pub location: Location,
    /// Address the node binds (`127.0.0.1` locally, `0.0.0.0` in a cloud).
    #[serde(deserialize_with = "ip_field")]
    pub bind_host: IpAddr,
    /// Host clients and other nodes use to reach it.
    pub public_host: String,
    pub ports: Ports,
    pub capacity: Capacity,
    pub cloud: Cloud,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    pub http: u16,
    pub game: u16,
    pub beacon: u16,
    pub mesh: u16,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    pub max_players: u32,
    pub max_matches: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cloud {
    pub provider: String,
    pub region: String,
    pub instance_type: String,
}

impl Region {
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_host, self.ports.http)
    }
    pub fn game_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_host, self.ports.game)
    }
    pub fn beacon_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_host, self.ports.beacon)
    }
    pub fn mesh_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_host, self.ports.mesh)
    }
    pub fn api_url(&self) -> String {
        format!("http://{}:{}", self.public_host, self.ports.http)
    }
}

/// One problem in the catalog, naming the file and the field.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogError {
    pub file: PathBuf,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for CatalogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.field,
            self.message
        )
    }
}

/// Parse an IP address with an error that names the field (serde's own
/// message for `IpAddr` names none).
fn ip_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let raw = String::deserialize(d)?;
    raw.parse().map_err(|_| {
        serde::de::Error::custom(format!("field `bind_host`: {raw:?} is not an IP address"))
    })
}

fn err(file: &Path, field: &str, message: impl Into<String>) -> CatalogError {
    CatalogError {
        file: file.to_path_buf(),
        field: field.to_string(),
        message: message.into(),
    }
}

/// Parse one region file; errors name the file and the field.
pub fn parse_file(path: &Path) -> Result<Region, CatalogError> {
    let meta = std::fs::metadata(path).map_err(|e| err(path, "-", e.to_string()))?;
    if meta.len() > REGION_FILE_MAX_BYTES {
        return Err(err(
            path,
            "-",
            format!("file larger than {REGION_FILE_MAX_BYTES} bytes"),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(path, "-", e.to_string()))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    let region: Region =
        serde_path_to_error_lite(de).map_err(|(field, msg)| err(path, &field, msg))?;
    validate_region(path, &region)?;
    Ok(region)
}

/// serde_json reports "missing field `x`" / "unknown field `x`" / "invalid type ... at line";
/// pull the field name out of the message so every error names a field.
fn serde_path_to_error_lite(
    de: &mut serde_json::Deserializer<serde_json::de::StrRead<'_>>,
) -> Result<Region, (String, String)> {
    Region::deserialize(de).map_err(|e| {
        let msg = e.to_string();
        let field = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.contains("field"))
            .unwrap_or("-")
            .to_string();
        (field, msg)
    })
}

fn validate_region(path: &Path, r: &Region) -> Result<(), CatalogError> {
    let valid_name = !r.name.is_empty()
        && r.name.len() <= 32
        && r.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid_name {
        return Err(err(path, "name", "1-32 characters of a-z, 0-9 and '-'"));
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if stem != r.name {
        return Err(err(
            path,
            "name",
            format!("must match the file name ({stem})"),
        ));
    }
    if r.display_name.trim().is_empty() {
        return Err(err(path, "display_name", "must not be empty"));
    }
    if r.public_host.is_empty() || r.public_host.contains(['/', ' ', ':']) {
        return Err(err(
            path,
            "public_host",
            "a host name or IP address without port",
        ));
    }
    if !(-90.0..=90.0).contains(&r.location.lat) {
        return Err(err(path, "location.lat", "must be within -90..=90"));
    }
    if !(-180.0..=180.0).contains(&r.location.lon) {
        return Err(err(path, "location.lon", "must be within -180..=180"));
    }
    let ports = [
        ("ports.http", r.ports.http),
        ("ports.game", r.ports.game),
        ("ports.beacon", r.ports.beacon),
        ("ports.mesh", r.ports.mesh),
    ];
    for (i, (name, p)) in ports.iter().enumerate() {
        if *p < 1024 {
            return Err(err(path, name, "must be 1024..=65535"));
        }
        if let Some((other, _)) = ports[..i].iter().find(|(_, q)| q == p) {
            return Err(err(path, name, format!("clashes with {other} ({p})")));
        }
    }
    if r.capacity.max_players == 0 {
        return Err(err(path, "capacity.max_players", "must be at least 1"));
    }
    Ok(())
}

/// Load and check every `*.json` file in `dir`: each file valid, names
/// unique, and no two regions on one host sharing a port.
pub fn check_catalog(dir: &Path) -> Result<BTreeMap<String, Region>, Vec<CatalogError>> {
    let mut errors = Vec::new();
    let mut regions: BTreeMap<String, (PathBuf, Region)> = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Err(vec![err(dir, "-", format!("cannot read directory: {e}"))]),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.len() > REGIONS_MAX {
        return Err(vec![err(
            dir,
            "-",
            format!("more than {REGIONS_MAX} region files"),
        )]);
    }
    for file in files {
        match parse_file(&file) {
            Ok(r) => {
                if let Some((other, _)) = regions.get(&r.name) {
                    errors.push(err(
                        &file,
                        "name",
                        format!(
                            "duplicate region name {} (also {})",
                            r.name,
                            other.display()
                        ),
                    ));
                    continue;
                }
                regions.insert(r.name.clone(), (file, r));
            }
            Err(e) => errors.push(e),
        }
    }
    // Port clashes between regions sharing a host.
    let list: Vec<&(PathBuf, Region)> = regions.values().collect();
    for (i, (file, r)) in list.iter().enumerate() {
        for (ofile, o) in &list[..i] {
            if o.public_host != r.public_host && o.bind_host != r.bind_host {
                continue;
            }
            let mine = [r.ports.http, r.ports.game, r.ports.beacon, r.ports.mesh];
            let theirs = [o.ports.http, o.ports.game, o.ports.beacon, o.ports.mesh];
            let names = ["ports.http", "ports.game", "ports.beacon", "ports.mesh"];
            for (n, p) in names.iter().zip(mine) {
                if theirs.contains(&p) {
                    errors.push(err(
                        file,
                        n,
                        format!(
                            "port {p} clashes with region {} ({})",
                            o.name,
                            ofile.display()
                        ),
                    ));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(regions.into_iter().map(|(k, (_, r))| (k, r)).collect())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region_json(name: &str, http: u16) -> String {
        format!(
            r#"{{"name":"{name}","display_name":"X","latency_group":"g","location":{{"lat":1,"lon":2}},
            "bind_host":"127.0.0.1","public_host":"127.0.0.1",
            "ports":{{"http":{http},"game":{},"beacon":{},"mesh":{}}},
            "capacity":{{"max_players":10,"max_matches":1}},
            "cloud":{{"provider":"aws","region":"eu-west-1","instance_type":"c7g.large"}}}}"#,
            http + 100,
            http + 200,
            http + 300
        )
    }

    #[test]
    fn shipped_catalog_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../regions");
        let regions = check_catalog(&dir).expect("shipped regions are valid");
        assert!(regions.len() >= 3);
    }

    #[test]
    fn errors_name_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), region_json("a", 8000)).unwrap();
        std::fs::write(dir.path().join("b.json"), region_json("b", 8000)).unwrap();
        let missing = region_json("c", 9000).replace(r#""display_name":"X","#, "");
        std::fs::write(dir.path().join("c.json"), missing).unwrap();
        std::fs::write(dir.path().join("d.json"), region_json("e", 9500)).unwrap();
        let bad_host = region_json("f", 9600)
            .replace(r#""bind_host":"127.0.0.1""#, r#""bind_host":"300.1.1.1""#);
        std::fs::write(dir.path().join("f.json"), bad_host).unwrap();
        let errors = check_catalog(dir.path()).unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let joined = text.join("\n");
        assert!(
            joined.contains("b.json: ports.http: port 8000 clashes with region a"),
            "{joined}"
        );
        assert!(joined.contains("c.json: display_name"), "{joined}");
        assert!(
            joined.contains("d.json: name: must match the file name"),
            "{joined}"
        );
        assert!(joined.contains("f.json: bind_host"), "{joined}");
    }
}
