//! The client's `--json` output, read tolerantly: each field is looked up under every name it
//! has been given, so the tests do not break on a rename.

use super::Value;

/// One chunk as `stat --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkStat {
    pub index: u32,
    pub offset: u64,
    pub length: u64,
    pub crc32: u32,
    /// Addresses of the nodes holding a copy.
    pub nodes: Vec<String>,
}

/// `stat ID --json`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatInfo {
    pub id: Option<String>,
    pub name: String,
    pub size: u64,
    pub chunking: String,
    pub chunks: Vec<ChunkStat>,
    pub raw: Value,
}

/// One entry of `ls --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub id: String,
    pub name: String,
    pub size: u64,
}

fn field<'a>(obj: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|n| obj.get(*n))
}

fn req<'a>(obj: &'a Value, names: &[&str]) -> Result<&'a Value, String> {
    field(obj, names).ok_or_else(|| format!("no field {} in {obj}", names.join("|")))
}

fn as_u64(v: &Value, what: &str) -> Result<u64, String> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{what} is not an unsigned integer: {v}"))
}

fn as_string(v: &Value, what: &str) -> Result<String, String> {
    v.as_str().map(str::to_string).ok_or_else(|| format!("{what} is not a string: {v}"))
}

/// A crc32 as a number or as hex text (`"0a1b2c3d"` or `"0x0a1b2c3d"`).
fn as_crc32(v: &Value) -> Result<u32, String> {
    let parsed = match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => u32::from_str_radix(s.trim_start_matches("0x"), 16).ok(),
        _ => None,
    };
    parsed.ok_or_else(|| format!("crc32 is neither a u32 nor hex text: {v}"))
}

impl StatInfo {
    pub fn from_json(v: &Value) -> Result<StatInfo, String> {
        let v = field(v, &["file"]).filter(|f| f.is_object()).unwrap_or(v);
        let top_nodes: Vec<String> = field(v, &["nodes", "node_addrs"])
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let chunks = req(v, &["chunks", "chunk_table"])?
            .as_array()
            .ok_or("chunks is not an array")?
            .iter()
            .map(|c| chunk(c, &top_nodes))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StatInfo {
            id: field(v, &["id", "file_id"]).and_then(Value::as_str).map(str::to_string),
            name: as_string(req(v, &["name", "file_name"])?, "name")?,
            size: as_u64(req(v, &["size", "size_bytes"])?, "size")?,
            chunking: as_string(req(v, &["chunking"])?, "chunking")?.to_lowercase(),
            chunks,
            raw: v.clone(),
        })
    }
}

fn chunk(c: &Value, top_nodes: &[String]) -> Result<ChunkStat, String> {
    let index = as_u64(req(c, &["index", "chunk_idx", "chunk_index", "idx"])?, "chunk index")?;
    let nodes_value = req(c, &["nodes", "node", "placement", "replicas", "node_addrs"])?;
    let items: Vec<&Value> = match nodes_value {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let nodes = items
        .into_iter()
        .map(|n| match n {
            Value::String(s) => Ok(s.clone()),
            Value::Number(i) => i
                .as_u64()
                .and_then(|i| top_nodes.get(i as usize).cloned())
                .ok_or_else(|| format!("chunk {index}: node index {i} does not name a node in {top_nodes:?}")),
            Value::Object(_) => field(n, &["addr", "address", "node"])
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("chunk {index}: node entry without an address: {n}")),
            other => Err(format!("chunk {index}: unreadable node entry {other}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ChunkStat {
        index: u32::try_from(index).map_err(|_| format!("chunk index {index} is over u32"))?,
        offset: as_u64(req(c, &["offset", "offset_bytes"])?, "chunk offset")?,
        length: as_u64(req(c, &["length", "len", "length_bytes", "size"])?, "chunk length")?,
        crc32: as_crc32(req(c, &["crc32", "crc"])?)?,
        nodes,
    })
}

impl ListEntry {
    pub fn from_json_list(v: &Value) -> Result<Vec<ListEntry>, String> {
        let v = field(v, &["files"]).unwrap_or(v);
        v.as_array()
            .ok_or_else(|| format!("ls --json is not an array: {v}"))?
            .iter()
            .map(|e| {
                Ok(ListEntry {
                    id: as_string(req(e, &["id", "file_id"])?, "id")?,
                    name: as_string(req(e, &["name", "file_name"])?, "name")?,
                    size: as_u64(req(e, &["size", "size_bytes"])?, "size")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::{json, Value};

    #[test]
    fn client_json_is_read_as_documented() {
        let stat: Value = serde_json::json!({
            "id": "abababababababababababababababab",
            "name": "f",
            "size": 3,
            "chunking": "dynamic",
            "created_unix_ms": 5,
            "n_chunks": 1,
            "chunks": [{"chunk_idx": 0, "offset": 0, "length": 3, "crc32": "0000beef", "nodes": ["n1:2", "n0:1"]}]
        });
        let info = json::StatInfo::from_json(&stat).expect("parse stat");
        assert_eq!(info.name, "f");
        assert_eq!(info.chunking, "dynamic");
        assert_eq!(
            info.chunks,
            [json::ChunkStat {
                index: 0,
                offset: 0,
                length: 3,
                crc32: 0xbeef,
                nodes: vec!["n1:2".into(), "n0:1".into()]
            }]
        );
        let ls = serde_json::json!([{"id": "ab", "name": "x y", "size": 7, "chunking": "equal"}]);
        let entries = json::ListEntry::from_json_list(&ls).expect("parse ls");
        assert_eq!(entries, [json::ListEntry { id: "ab".into(), name: "x y".into(), size: 7 }]);
        assert!(json::StatInfo::from_json(&serde_json::json!({"name": "f"})).is_err());
    }
}
