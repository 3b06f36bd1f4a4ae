//! Open Inference Protocol (v2) tensors on the wire: JSON tensors and the
//! binary tensor data extension, decoded into model-ordered [`Tensor`]s and
//! encoded back. Every rejection names the offending field.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::model::{DataType, Tensor, TensorData, TensorSpec};

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    pub inputs: Vec<InferInput>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<u64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub data: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

/// A response output: either JSON `data`, or `binary_data_size` and bytes
/// appended after the JSON header.
#[derive(Debug, Serialize)]
pub struct OutputJson<'a> {
    pub name: &'a str,
    pub datatype: &'static str,
    pub shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a TensorData>,
}

impl Serialize for TensorData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TensorData::Bool(v) => v.serialize(s),
            TensorData::U8(v) => v.serialize(s),
            TensorData::I8(v) => v.serialize(s),
            TensorData::I32(v) => v.serialize(s),
            TensorData::I64(v) => v.serialize(s),
            TensorData::F32(v) => v.serialize(s),
            TensorData::F64(v) => v.serialize(s),
        }
    }
}

fn bool_param(
    params: &Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<bool>, ApiError> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(format!(
            "{field}.parameters.{key}: must be true or false"
        ))),
    }
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn convert<T>(
    values: &[&Value],
    field: &str,
    dt: DataType,
    f: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<T>, ApiError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            f(v).ok_or_else(|| {
                ApiError::invalid(format!("{field}[{i}]: {v} is not a valid {dt} value"))
            })
        })
        .collect()
}

fn from_json(values: &[&Value], field: &str, dt: DataType) -> Result<TensorData, ApiError> {
    Ok(match dt {
        DataType::Bool => TensorData::Bool(convert(values, field, dt, Value::as_bool)?),
        DataType::U8 => TensorData::U8(convert(values, field, dt, |v| {
            v.as_u64().and_then(|n| u8::try_from(n).ok())
        })?),
        DataType::I8 => TensorData::I8(convert(values, field, dt, |v| {
            v.as_i64().and_then(|n| i8::try_from(n).ok())
        })?),
        DataType::I32 => TensorData::I32(convert(values, field, dt, |v| {
            v.as_i64().and_then(|n| i32::try_from(n).ok())
        })?),
        DataType::I64 => TensorData::I64(convert(values, field, dt, Value::as_i64)?),
        // A number beyond f32's range would become ±inf: refused instead.
        DataType::F32 => TensorData::F32(convert(values, field, dt, |v| {
            v.as_f64().map(|x| x as f32).filter(|x| x.is_finite())
        })?),
        DataType::F64 => TensorData::F64(convert(values, field, dt, Value::as_f64)?),
    })
}

/// Decodes the request's inputs and returns them in `specs` order.
/// `binary` is whatever followed the JSON header (empty for pure JSON).
pub fn decode_inputs(
    req: &InferRequest,
    mut binary: &[u8],
    specs: &[TensorSpec],
    model_name: &str,
) -> Result<Vec<Tensor>, ApiError> {
    let mut slots: Vec<Option<Tensor>> = vec![None; specs.len()];
    for (i, input) in req.inputs.iter().enumerate() {
        let field = format!("inputs[{i}]");
        let Some(pos) = specs.iter().position(|s| s.name == input.name) else {
            let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(ApiError::invalid(format!(
                "{field}.name: model \"{model_name}\" has no input \"{}\" (inputs: {})",
                input.name,
                names.join(", ")
            )));
        };
        if slots[pos].is_some() {
            return Err(ApiError::invalid(format!(
                "{field}.name: input \"{}\" given twice",
                input.name
            )));
        }
        let spec = &specs[pos];
        let dt = DataType::parse(&input.datatype).ok_or_else(|| {
            let all: Vec<_> = DataType::ALL.iter().map(|d| d.as_str()).collect();
            ApiError::invalid(format!(
                "{field}.datatype: \"{}\" is not supported (one of {})",
                input.datatype,
                all.join(", ")
            ))
        })?;
        if dt != spec.datatype {
            return Err(ApiError::invalid(format!(
                "{field}.datatype: input \"{}\" is {}, got {dt}",
                spec.name, spec.datatype
            )));
        }
        let shape: Vec<usize> = input
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| ApiError::invalid(format!("{field}.shape: dimension too large")))?;
        spec.check_shape(&shape)
            .map_err(|e| ApiError::invalid(format!("{field}.shape: {e}")))?;
        let count = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| ApiError::invalid(format!("{field}.shape: too many elements")))?;

        let binary_size = match input.parameters.get("binary_data_size") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                ApiError::invalid(format!(
                    "{field}.parameters.binary_data_size: must be a non-negative integer"
                ))
            })?),
        };
        let data = match (binary_size, &input.data) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(format!(
                    "{field}: give either data or parameters.binary_data_size, not both"
                )))
            }
            (None, None) => {
                return Err(ApiError::invalid(format!(
                    "{field}.data: missing (or set parameters.binary_data_size)"
                )))
            }
            (Some(size), None) => {
                let expected = count.checked_mul(dt.size_bytes());
                if expected != Some(size as usize) {
                    return Err(ApiError::invalid(format!(
                        "{field}.parameters.binary_data_size: shape {shape:?} of {dt} needs {} bytes, got {size}",
                        count.saturating_mul(dt.size_bytes())
                    )));
                }
                if (binary.len() as u64) < size {
                    return Err(ApiError::invalid(format!(
                        "{field}.parameters.binary_data_size: {size} bytes declared, only {} left in the body",
                        binary.len()
                    )));
                }
                let (head, rest) = binary.split_at(size as usize);
                binary = rest;
                TensorData::from_le_bytes(dt, head)
            }
            (None, Some(data)) => {
                let mut values = Vec::new();
                flatten(data, &mut values);
                if values.len() != count {
                    return Err(ApiError::invalid(format!(
                        "{field}.data: shape {shape:?} needs {count} elements, got {}",
                        values.len()
                    )));
                }
                from_json(&values, &format!("{field}.data"), dt)?
            }
        };
        slots[pos] = Some(Tensor::new(spec.name.clone(), shape, data));
    }
    if !binary.is_empty() {
        return Err(ApiError::invalid(format!(
            "request body: {} bytes of binary data not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    slots
        .into_iter()
        .zip(specs)
        .map(|(slot, spec)| {
            slot.ok_or_else(|| {
                ApiError::invalid(format!("inputs: missing input \"{}\"", spec.name))
            })
        })
        .collect()
}

/// Which outputs to return, in order, and whether each goes as binary.
/// An output named twice is refused, as an input given twice is: every
/// output is encoded at most once, so a request cannot multiply its answer.
pub fn select_outputs(
    req: &InferRequest,
    specs: &[TensorSpec],
) -> Result<Vec<(usize, bool)>, ApiError> {
    let default_binary =
        bool_param(&req.parameters, "binary_data_output", "request")?.unwrap_or(false);
    let Some(requested) = &req.outputs else {
        return Ok((0..specs.len()).map(|i| (i, default_binary)).collect());
    };
    let mut selected: Vec<(usize, bool)> = Vec::with_capacity(requested.len());
    for (i, out) in requested.iter().enumerate() {
        let field = format!("outputs[{i}]");
        let pos = specs
            .iter()
            .position(|s| s.name == out.name)
            .ok_or_else(|| {
                let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
                ApiError::invalid(format!(
                    "{field}.name: no output \"{}\" (outputs: {})",
                    out.name,
                    names.join(", ")
                ))
            })?;
        if selected.iter().any(|(p, _)| *p == pos) {
            return Err(ApiError::invalid(format!(
                "{field}.name: output \"{}\" requested twice",
                out.name
            )));
        }
        let binary = bool_param(&out.parameters, "binary_data", &field)?.unwrap_or(default_binary);
        selected.push((pos, binary));
    }
    Ok(selected)
}

/// A `Vec` that refuses to grow past `max` bytes: the JSON encoder stops
/// as soon as an answer is too large instead of building it whole.
struct Bounded {
    buf: Vec<u8>,
    max: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.max {
            return Err(std::io::Error::other("response too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encodes the response: the JSON header, and the binary section if any
/// output is binary. Returns `(body, json_header_len)`, the latter `None`
/// for a pure JSON response; refuses (413) a body over `max_bytes`, checked
/// before the binary section is copied and while the JSON is written.
pub fn encode_response(
    model_name: &str,
    version: u64,
    id: Option<&str>,
    outputs: &[Tensor],
    selected: &[(usize, bool)],
    max_bytes: usize,
) -> Result<(Vec<u8>, Option<usize>), ApiError> {
    let too_large = || ApiError::response_too_large(max_bytes);
    let binary_len: usize = selected
        .iter()
        .filter(|(_, b)| *b)
        .map(|&(pos, _)| outputs[pos].data.len() * outputs[pos].datatype().size_bytes())
        .sum();
    if binary_len > max_bytes {
        return Err(too_large());
    }
    let mut items = Vec::with_capacity(selected.len());
    for &(pos, as_binary) in selected {
        let t = &outputs[pos];
        let (parameters, data) = if as_binary {
            let size = t.data.len() * t.datatype().size_bytes();
            (Some(serde_json::json!({"binary_data_size": size})), None)
        } else {
            (None, Some(&t.data))
        };
        items.push(OutputJson {
            name: &t.name,
            datatype: t.datatype().as_str(),
            shape: &t.shape,
            parameters,
            data,
        });
    }
    #[derive(Serialize)]
    struct Header<'a> {
        model_name: &'a str,
        model_version: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        outputs: Vec<OutputJson<'a>>,
    }
    let header = Header {
        model_name,
        model_version: version.to_string(),
        id,
        outputs: items,
    };
    let mut body = Bounded {
        buf: Vec::new(),
        max: max_bytes - binary_len,
    };
    serde_json::to_writer(&mut body, &header).map_err(|_| too_large())?;
    let mut body = body.buf;
    if binary_len == 0 && selected.iter().all(|(_, b)| !b) {
        return Ok((body, None));
    }
    let json_len = body.len();
    body.reserve_exact(binary_len);
    for &(pos, as_binary) in selected {
        if as_binary {
            outputs[pos].data.write_le_bytes(&mut body);
        }
    }
    Ok((body, Some(json_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<TensorSpec> {
        vec![TensorSpec {
            name: "features".into(),
            datatype: DataType::F32,
            shape: vec![None, Some(2)],
        }]
    }

    fn req(json: &str) -> InferRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn decodes_nested_and_flat_json() {
        for data in ["[1, 2, 3, 4]", "[[1, 2], [3, 4]]"] {
            let r = req(&format!(
                r#"{{"inputs":[{{"name":"features","shape":[2,2],"datatype":"FP32","data":{data}}}]}}"#
            ));
            let t = decode_inputs(&r, &[], &specs(), "m").unwrap();
            assert_eq!(t[0].data, TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]));
            assert_eq!(t[0].shape, vec![2, 2]);
        }
    }

    #[test]
    fn decodes_binary_inputs() {
        let r = req(
            r#"{"inputs":[{"name":"features","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#,
        );
        let mut bytes = Vec::new();
        TensorData::F32(vec![0.5, -1.0]).write_le_bytes(&mut bytes);
        let t = decode_inputs(&r, &bytes, &specs(), "m").unwrap();
        assert_eq!(t[0].data, TensorData::F32(vec![0.5, -1.0]));
        let e = decode_inputs(&r, &bytes[..4], &specs(), "m").unwrap_err();
        assert!(e.message.contains("only 4 left"), "{}", e.message);
        let mut extra = bytes.clone();
        extra.push(0);
        let e = decode_inputs(&r, &extra, &specs(), "m").unwrap_err();
        assert!(e.message.contains("not claimed"), "{}", e.message);
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            (
                r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#,
                "inputs[0].name",
            ),
            (
                r#"{"inputs":[{"name":"features","shape":[1,2],"datatype":"INT64","data":[1,2]}]}"#,
                "inputs[0].datatype: input \"features\" is FP32",
            ),
            (
                r#"{"inputs":[{"name":"features","shape":[1,2],"datatype":"BYTES","data":[1,2]}]}"#,
                "not supported",
            ),
            (
                r#"{"inputs":[{"name":"features","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
                "inputs[0].shape: dimension 1 must be 2",
            ),
            (
                r#"{"inputs":[{"name":"features","shape":[2,2],"datatype":"FP32","data":[1,2,3]}]}"#,
                "needs 4 elements, got 3",
            ),
            (
                r#"{"inputs":[{"name":"features","shape":[1,2],"datatype":"FP32","data":[1,"a"]}]}"#,
                "inputs[0].data[1]",
            ),
            (
                r#"{"inputs":[{"name":"features","shape":[1,2],"datatype":"FP32"}]}"#,
                "inputs[0].data: missing",
            ),
            (r#"{"inputs":[]}"#, "missing input \"features\""),
            (
                r#"{"inputs":[{"name":"features","shape":[1,2],"datatype":"FP32","data":[1,2]},{"name":"features","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#,
                "given twice",
            ),
        ];
        for (json, want) in cases {
            let e = decode_inputs(&req(json), &[], &specs(), "m").unwrap_err();
            assert!(
                e.message.contains(want),
                "{json}: {} lacks {want}",
                e.message
            );
            assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn encodes_binary_and_json_outputs() {
        let outputs = vec![Tensor::new(
            "score",
            vec![2, 1],
            TensorData::F32(vec![0.25, 0.75]),
        )];
        let (body, len) =
            encode_response("m", 1, Some("7"), &outputs, &[(0, false)], 1 << 20).unwrap();
        assert!(len.is_none());
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["outputs"][0]["data"], serde_json::json!([0.25, 0.75]));
        assert_eq!(v["id"], "7");

        let (body, len) = encode_response("m", 1, None, &outputs, &[(0, true)], 1 << 20).unwrap();
        let len = len.unwrap();
        let v: Value = serde_json::from_slice(&body[..len]).unwrap();
        assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(
            TensorData::from_le_bytes(DataType::F32, &body[len..]),
            TensorData::F32(vec![0.25, 0.75])
        );
    }

    #[test]
    fn an_output_named_twice_is_refused() {
        let specs = vec![TensorSpec {
            name: "score".into(),
            datatype: DataType::F32,
            shape: vec![None, Some(1)],
        }];
        let r = req(
            r#"{"inputs":[],"outputs":[{"name":"score"},{"name":"score","parameters":{"binary_data":true}}]}"#,
        );
        let e = select_outputs(&r, &specs).unwrap_err();
        assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
        assert!(
            e.message
                .starts_with("outputs[1].name: output \"score\" requested twice"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_response_over_the_bound_is_refused_not_built() {
        let outputs = vec![Tensor::new(
            "score",
            vec![1000, 1],
            TensorData::F32(vec![0.123_456_79; 1000]),
        )];
        for binary in [false, true] {
            let e = encode_response("m", 1, None, &outputs, &[(0, binary)], 2048).unwrap_err();
            assert_eq!(
                e.status,
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "binary {binary}"
            );
            assert!(
                e.message.contains("server.max_response_bytes"),
                "{}",
                e.message
            );
            // The same answer fits a larger bound.
            let (body, _) =
                encode_response("m", 1, None, &outputs, &[(0, binary)], 1 << 20).unwrap();
            assert!(body.len() > 2048);
        }
    }

    #[test]
    fn fp32_values_beyond_its_range_are_refused() {
        for big in ["1e39", "-3.5e38"] {
            let r = req(&format!(
                r#"{{"inputs":[{{"name":"features","shape":[1,2],"datatype":"FP32","data":[1,{big}]}}]}}"#
            ));
            let e = decode_inputs(&r, &[], &specs(), "m").unwrap_err();
            assert!(
                e.message.starts_with("inputs[0].data[1]: ") && e.message.contains("FP32"),
                "{}",
                e.message
            );
        }
        // f32::MAX itself is a valid FP32 value.
        let r = req(
            r#"{"inputs":[{"name":"features","shape":[1,2],"datatype":"FP32","data":[1,3.4028235e38]}]}"#,
        );
        assert!(decode_inputs(&r, &[], &specs(), "m").is_ok());
    }
}
