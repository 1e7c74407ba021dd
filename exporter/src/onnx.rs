//! Small constructors for the prost-generated ONNX protobuf types of
//! [`tract_onnx::pb`], so the lowering reads as a list of nodes.

use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::type_proto::{Tensor as TensorType, Value as TypeValue};
use tract_onnx::pb::{
    AttributeProto, NodeProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

/// Lowest and highest `ai.onnx` opset the exporter writes. Below 13 Softmax,
/// Resize and Slice have different signatures; above 21 the IR version and
/// several operators change and no back end here was tested.
pub const MIN_OPSET: i64 = 13;
pub const MAX_OPSET: i64 = 21;

/// The IR version released together with `opset` (ONNX's versioning table),
/// so older runtimes that only know that release accept the file.
pub fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// Element types the exporter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    I64,
}

impl Elem {
    pub fn data_type(self) -> DataType {
        match self {
            Elem::F32 => DataType::Float,
            Elem::F16 => DataType::Float16,
            Elem::I64 => DataType::Int64,
        }
    }
}

/// One dimension of a value's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A named symbolic dimension (`batch`, `height`, `height/2`).
    Param(String),
    /// Known to exist, size not expressed.
    Unknown,
}

impl Dim {
    fn to_proto(&self) -> Dimension {
        let value = match self {
            Dim::Fixed(n) => Some(dimension::Value::DimValue(*n as i64)),
            Dim::Param(s) => Some(dimension::Value::DimParam(s.clone())),
            Dim::Unknown => None,
        };
        Dimension {
            value,
            ..Default::default()
        }
    }
}

pub fn value_info(name: &str, elem: Elem, dims: &[Dim], doc: &str) -> ValueInfoProto {
    let tensor = TensorType {
        elem_type: elem.data_type() as i32,
        shape: Some(TensorShapeProto {
            dim: dims.iter().map(Dim::to_proto).collect(),
        }),
    };
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(tensor)),
            ..Default::default()
        }),
        doc_string: doc.to_string(),
    }
}

/// A float tensor stored as `raw_data` (little-endian), in f32 or f16.
pub fn tensor_f32(name: &str, dims: &[usize], data: &[f32], elem: Elem) -> TensorProto {
    let raw_data = match elem {
        Elem::F16 => data
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        _ => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    let data_type = match elem {
        Elem::F16 => DataType::Float16,
        _ => DataType::Float,
    };
    raw_tensor(name, dims, data_type, raw_data)
}

pub fn tensor_i64(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
    let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_tensor(name, dims, DataType::Int64, raw)
}

fn raw_tensor(name: &str, dims: &[usize], data_type: DataType, raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type as i32,
        name: name.to_string(),
        raw_data,
        ..Default::default()
    }
}

/// A node attribute.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(&'static str),
}

pub fn attribute(name: &str, value: Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.r#type = AttributeType::Int as i32;
            a.i = i;
        }
        Attr::Ints(v) => {
            a.r#type = AttributeType::Ints as i32;
            a.ints = v;
        }
        Attr::Float(f) => {
            a.r#type = AttributeType::Float as i32;
            a.f = f;
        }
        Attr::Str(s) => {
            a.r#type = AttributeType::String as i32;
            a.s = s.as_bytes().to_vec();
        }
    }
    a
}

pub fn node(
    op_type: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<(&str, Attr)>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: name.to_string(),
        op_type: op_type.to_string(),
        attribute: attrs.into_iter().map(|(n, v)| attribute(n, v)).collect(),
        ..Default::default()
    }
}

pub fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.to_string(),
        value: value.to_string(),
    }
}

/// The declared dims of a graph input or output (`None` where symbolic);
/// empty when it declares no tensor shape.
pub fn declared_dims(value: &ValueInfoProto) -> Vec<Option<i64>> {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
    use tract_onnx::pb::type_proto::Value as TypeValue;
    match value.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(DimValue::DimValue(v)) => Some(v),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => vec![],
    }
}
