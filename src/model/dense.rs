//! A native evaluator for small dense ONNX graphs, inside the tract backend.
//!
//! The shipped models (and what `models/train` exports for any app) are a
//! scaler, a few `MatMul` + `Add` + `Relu` layers or a `LinearClassifier`,
//! a `Sigmoid`, and the `Concat`/`Slice` that picks the positive class. On
//! the batch sizes a ranking request has (100–300 rows) tract spends three
//! quarters of its time around the multiplications — a fresh session per
//! call, symbolic shapes resolved per call, packing the activations, one
//! generic pass per element-wise op — and ran these models 2.7–3.5× slower
//! than ONNX Runtime (`benches/RESULTS.md`). A graph made only of the ops
//! below is instead run here: each value a row-major `[N, C]` matrix, the
//! multiplications by a register-blocked AVX2/FMA kernel (4 rows × 16
//! columns a step), chosen at run time like the retrieval kernels, with a
//! portable loop elsewhere. Anything else — another op, an attribute this
//! does not handle, a shape that is not `[N, C]` — keeps the tract plan.
//!
//! The results are the same maths in another summation order: they agree
//! with tract to ~1e-6 (a unit test runs every shipped model both ways),
//! within the golden sets' tolerance. `CASCADE_DENSE=off` keeps tract for
//! every model (for comparisons).

use std::collections::HashMap;

use tract_onnx::pb::{self, NodeProto, TensorProto};

/// One operand of an element-wise op: a value of the graph, or a constant
/// broadcast along the rows (one value per column, or one for all).
#[derive(Debug, Clone)]
enum Operand {
    Value(usize),
    Const(Vec<f32>),
}

#[derive(Debug, Clone, Copy)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone)]
enum Step {
    Binary(BinOp, Operand, Operand),
    /// `(x - sub) * mul` or `(x - sub) / div` (a scaler: two ops, one pass;
    /// the same two roundings).
    Scale {
        x: usize,
        sub: Vec<f32>,
        by: Vec<f32>,
        divide: bool,
    },
    /// `x · w`, `w` `[k, m]` row-major, plus `bias` (`m` values or none),
    /// then `Relu` when `relu` (a Relu that only it fed).
    MatMul {
        x: usize,
        w: Vec<f32>,
        k: usize,
        m: usize,
        bias: Vec<f32>,
        relu: bool,
    },
    Relu(usize),
    Sigmoid(usize),
    Softmax(usize),
    Concat(Vec<usize>),
    /// Columns `from..to` of a value.
    Slice(usize, usize, usize),
}

/// A graph this module runs: steps in order, each making one value.
#[derive(Debug, Clone)]
pub struct Dense {
    steps: Vec<Step>,
    /// Whether each step's value is read on the way to the output (a step
    /// that folding left unread is skipped).
    live: Vec<bool>,
    /// Columns of the input (value 0) and of each step's value.
    cols: Vec<usize>,
    output: usize,
}

fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != pb::tensor_proto::DataType::Float as i32 || !t.external_data.is_empty() {
        return None;
    }
    if t.raw_data.is_empty() {
        Some(t.float_data.clone())
    } else {
        Some(
            t.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }
}

fn ints(t: &TensorProto) -> Option<Vec<i64>> {
    if t.data_type != pb::tensor_proto::DataType::Int64 as i32 {
        return None;
    }
    if t.raw_data.is_empty() {
        Some(t.int64_data.clone())
    } else {
        Some(
            t.raw_data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        )
    }
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}

/// A column range from `Slice` bounds (ONNX clamps; negatives count from the end).
fn bound(v: i64, cols: usize) -> usize {
    let c = cols as i64;
    (if v < 0 { v + c } else { v }).clamp(0, c) as usize
}

impl Dense {
    /// The graph of `model` as steps, when every node is one this module
    /// runs and the one input is an f32 `[N, F]`; `None` otherwise.
    pub fn from_proto(model: &pb::ModelProto) -> Option<Dense> {
        let g = model.graph.as_ref()?;
        let consts: HashMap<&str, &TensorProto> =
            g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let inputs: Vec<&pb::ValueInfoProto> = g
            .input
            .iter()
            .filter(|i| !consts.contains_key(i.name.as_str()))
            .collect();
        if inputs.len() != 1 || g.output.len() != 1 {
            return None;
        }
        let pb::type_proto::Value::TensorType(t) = inputs[0].r#type.as_ref()?.value.as_ref()?;
        if t.elem_type != pb::tensor_proto::DataType::Float as i32 {
            return None;
        }
        let shape = t.shape.as_ref()?.dim.clone();
        let width = match shape.as_slice() {
            [_, d] => match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => v as usize,
                _ => return None,
            },
            _ => return None,
        };
        let mut dense = Dense {
            steps: Vec::new(),
            live: Vec::new(),
            cols: vec![width],
            output: 0,
        };
        let mut values: HashMap<&str, usize> = HashMap::from([(inputs[0].name.as_str(), 0)]);
        // How many times each value is read (the graph output counts).
        let mut uses: HashMap<&str, usize> = HashMap::new();
        for name in g
            .node
            .iter()
            .flat_map(|n| &n.input)
            .chain([&g.output[0].name])
        {
            *uses.entry(name.as_str()).or_default() += 1;
        }
        // A Cast to float or an Identity is the same value under a new
        // name: its reads count as reads of its input, and both names have
        // the value's total (so a fold never changes a value that is also
        // read under another name).
        let alias = |n: &NodeProto| {
            matches!(n.domain.as_str(), "" | "ai.onnx")
                && (n.op_type == "Identity" || (n.op_type == "Cast" && attr_i(n, "to", 0) == 1))
                && n.input.len() == 1
                && n.output.len() == 1
        };
        for n in g.node.iter().rev().filter(|n| alias(n)) {
            let out = uses.get(n.output[0].as_str()).copied().unwrap_or(0);
            *uses.entry(n.input[0].as_str()).or_default() += out;
            *uses.entry(n.input[0].as_str()).or_default() -= 1;
        }
        for n in g.node.iter().filter(|n| alias(n)) {
            let total = uses.get(n.input[0].as_str()).copied().unwrap_or(0);
            uses.insert(n.output[0].as_str(), total);
        }
        // Values that are constants: initializers, and `Constant` nodes.
        let mut constants: HashMap<&str, &TensorProto> = consts;
        for n in &g.node {
            let value = |name: &str| values.get(name).copied();
            let operand = |name: &str, cols: usize| -> Option<Operand> {
                if let Some(v) = values.get(name) {
                    return (dense.cols[*v] == cols || cols == 0).then_some(Operand::Value(*v));
                }
                let c = floats(constants.get(name)?)?;
                // A scalar becomes a row, so every side is a row slice.
                match c.len() {
                    1 => Some(Operand::Const(vec![c[0]; cols])),
                    l if l == cols => Some(Operand::Const(c)),
                    _ => None,
                }
            };
            let (step, cols) = match (n.domain.as_str(), n.op_type.as_str()) {
                ("" | "ai.onnx", "Constant") => {
                    let t = attr(n, "value")?.t.as_ref()?;
                    constants.insert(n.output.first()?.as_str(), t);
                    continue;
                }
                ("" | "ai.onnx", op @ ("Add" | "Sub" | "Mul" | "Div")) => {
                    let op = match op {
                        "Add" => BinOp::Add,
                        "Sub" => BinOp::Sub,
                        "Mul" => BinOp::Mul,
                        _ => BinOp::Div,
                    };
                    let [a, b] = [n.input.first()?, n.input.get(1)?];
                    // The width of whichever side is a value of the graph.
                    let cols = value(a).or(value(b)).map(|v| dense.cols[v])?;
                    let (oa, ob) = (operand(a, cols)?, operand(b, cols)?);
                    // A bias added to a product nothing else reads is
                    // folded into the product (one pass fewer).
                    if let (BinOp::Add, Operand::Value(v), Operand::Const(c), name)
                    | (BinOp::Add, Operand::Const(c), Operand::Value(v), name) =
                        (op, &oa, &ob, if value(a).is_some() { a } else { b })
                    {
                        if uses.get(name.as_str()) == Some(&1) {
                            // Value v (> 0) is made by step v - 1.
                            let step = v.checked_sub(1).and_then(|i| dense.steps.get_mut(i));
                            // Not after a Relu was folded in: relu(xW + b) + c
                            // is not relu(xW + b + c).
                            if let Some(Step::MatMul {
                                bias, relu: false, ..
                            }) = step
                            {
                                bias.iter_mut().zip(c).for_each(|(b, c)| *b += c);
                                values.insert(n.output.first()?.as_str(), *v);
                                continue;
                            }
                        }
                    }
                    // `(x - a) * b` or `(x - a) / b` where nothing else
                    // reads `x - a`: one pass.
                    if let (BinOp::Mul | BinOp::Div, Operand::Value(v), Operand::Const(by)) =
                        (op, &oa, &ob)
                    {
                        let single = uses.get(a.as_str()) == Some(&1);
                        let made_by = v.checked_sub(1).and_then(|i| dense.steps.get(i));
                        if let (
                            true,
                            Some(Step::Binary(BinOp::Sub, Operand::Value(x), Operand::Const(sub))),
                        ) = (single, made_by)
                        {
                            let step = Step::Scale {
                                x: *x,
                                sub: sub.clone(),
                                by: by.clone(),
                                divide: matches!(op, BinOp::Div),
                            };
                            (step, cols)
                        } else {
                            (Step::Binary(op, oa, ob), cols)
                        }
                    } else {
                        (Step::Binary(op, oa, ob), cols)
                    }
                }
                // A cast to float of a float value, an identity: the same
                // value under another name.
                ("" | "ai.onnx", "Cast" | "Identity")
                    if n.op_type == "Identity" || attr_i(n, "to", 0) == 1 =>
                {
                    let x = value(n.input.first()?)?;
                    values.insert(n.output.first()?.as_str(), x);
                    continue;
                }
                ("" | "ai.onnx", "MatMul") => {
                    let x = value(n.input.first()?)?;
                    let t = constants.get(n.input.get(1)?.as_str())?;
                    let (k, m) = match t.dims.as_slice() {
                        [k, m] => (*k as usize, *m as usize),
                        _ => return None,
                    };
                    if k != dense.cols[x] {
                        return None;
                    }
                    let w = floats(t)?;
                    (
                        Step::MatMul {
                            x,
                            w,
                            k,
                            m,
                            bias: vec![0.0; m],
                            relu: false,
                        },
                        m,
                    )
                }
                ("" | "ai.onnx", "Gemm") => {
                    let x = value(n.input.first()?)?;
                    let t = constants.get(n.input.get(1)?.as_str())?;
                    let alpha = attr(n, "alpha").map_or(1.0, |a| a.f);
                    let beta = attr(n, "beta").map_or(1.0, |a| a.f);
                    if attr_i(n, "transA", 0) != 0 || alpha != 1.0 {
                        return None;
                    }
                    let (r, c) = match t.dims.as_slice() {
                        [r, c] => (*r as usize, *c as usize),
                        _ => return None,
                    };
                    let raw = floats(t)?;
                    let (k, m, w) = if attr_i(n, "transB", 0) == 0 {
                        (r, c, raw)
                    } else {
                        // Stored `[m, k]`: transpose once, here.
                        let mut w = vec![0.0; r * c];
                        for i in 0..r {
                            for j in 0..c {
                                w[j * r + i] = raw[i * c + j];
                            }
                        }
                        (c, r, w)
                    };
                    if k != dense.cols[x] {
                        return None;
                    }
                    let bias = match n.input.get(2).filter(|s| !s.is_empty()) {
                        None => vec![0.0; m],
                        Some(name) => {
                            let b = floats(constants.get(name.as_str())?)?;
                            match b.len() {
                                1 => vec![b[0] * beta; m],
                                l if l == m => b.iter().map(|x| x * beta).collect(),
                                _ => return None,
                            }
                        }
                    };
                    (
                        Step::MatMul {
                            x,
                            w,
                            k,
                            m,
                            bias,
                            relu: false,
                        },
                        m,
                    )
                }
                ("" | "ai.onnx", "Relu") => {
                    let input = n.input.first()?;
                    let x = value(input)?;
                    // After a product nothing else reads: applied as the
                    // product's last pass, in place.
                    if uses.get(input.as_str()) == Some(&1) {
                        let step = x.checked_sub(1).and_then(|i| dense.steps.get_mut(i));
                        if let Some(Step::MatMul {
                            relu: relu @ false, ..
                        }) = step
                        {
                            *relu = true;
                            values.insert(n.output.first()?.as_str(), x);
                            continue;
                        }
                    }
                    (Step::Relu(x), dense.cols[x])
                }
                ("" | "ai.onnx", "Sigmoid") => {
                    let x = value(n.input.first()?)?;
                    (Step::Sigmoid(x), dense.cols[x])
                }
                ("" | "ai.onnx", "Softmax") if matches!(attr_i(n, "axis", -1), -1 | 1) => {
                    let x = value(n.input.first()?)?;
                    (Step::Softmax(x), dense.cols[x])
                }
                ("" | "ai.onnx", "Concat") if matches!(attr_i(n, "axis", 0), -1 | 1) => {
                    let parts: Vec<usize> =
                        n.input.iter().map(|i| value(i)).collect::<Option<_>>()?;
                    let cols = parts.iter().map(|&p| dense.cols[p]).sum();
                    (Step::Concat(parts), cols)
                }
                ("" | "ai.onnx", "Slice") => {
                    let x = value(n.input.first()?)?;
                    let get = |i: usize| -> Option<Vec<i64>> {
                        n.input
                            .get(i)
                            .filter(|s| !s.is_empty())
                            .map(|s| constants.get(s.as_str()).and_then(|t| ints(t)))
                            .unwrap_or(None)
                    };
                    let (starts, ends) = (get(1)?, get(2)?);
                    let axes = n.input.get(3).filter(|s| !s.is_empty()).map(|_| get(3));
                    let steps = n.input.get(4).filter(|s| !s.is_empty()).map(|_| get(4));
                    let axis_ok = match axes {
                        None => false, // axis 0 (the rows) by default
                        Some(a) => {
                            let a = a?;
                            a == [1] || a == [-1]
                        }
                    };
                    let steps_ok = match steps {
                        None => true,
                        Some(s) => s? == [1],
                    };
                    if !axis_ok || !steps_ok || starts.len() != 1 || ends.len() != 1 {
                        return None;
                    }
                    let cols = dense.cols[x];
                    let (from, to) = (bound(starts[0], cols), bound(ends[0], cols));
                    if from >= to {
                        return None;
                    }
                    // Exactly one part of a concatenation: that part.
                    if let Some(Step::Concat(parts)) =
                        x.checked_sub(1).and_then(|i| dense.steps.get(i))
                    {
                        let mut at = 0;
                        for &p in parts {
                            if (at, at + dense.cols[p]) == (from, to) {
                                values.insert(n.output.first()?.as_str(), p);
                                break;
                            }
                            at += dense.cols[p];
                        }
                        if values.contains_key(n.output.first()?.as_str()) {
                            continue;
                        }
                    }
                    // Columns of a sigmoid of a product, where nothing else
                    // reads either: the product of those columns alone, then
                    // the sigmoid (a binary LinearClassifier's positive
                    // class: one dot per row instead of two columns, half
                    // the exponentials, no copy).
                    if let Some(Step::Sigmoid(y)) =
                        x.checked_sub(1).and_then(|i| dense.steps.get(i))
                    {
                        let y = *y;
                        let read_once = |v: usize| {
                            values
                                .iter()
                                .all(|(name, &w)| w != v || uses.get(name) == Some(&1))
                        };
                        let single = uses.get(n.input[0].as_str()) == Some(&1)
                            && read_once(x)
                            && read_once(y)
                            && y + 1 == x;
                        if let (true, Some(Step::MatMul { w, k, m, bias, .. })) = (
                            single,
                            y.checked_sub(1).and_then(|i| dense.steps.get_mut(i)),
                        ) {
                            let (rows, stride) = (*k, *m);
                            let kept: Vec<f32> = (0..rows)
                                .flat_map(|j| w[j * stride + from..j * stride + to].to_vec())
                                .collect();
                            *w = kept;
                            *bias = bias[from..to].to_vec();
                            *m = to - from;
                            dense.cols[y] = to - from;
                            dense.cols[x] = to - from;
                            values.insert(n.output.first()?.as_str(), x);
                            continue;
                        }
                    }
                    (Step::Slice(x, from, to), to - from)
                }
                ("ai.onnx.ml", "LinearClassifier") => {
                    // Only its probabilities; a graph that reads its label
                    // keeps tract (the label is not a value here).
                    let x = value(n.input.first()?)?;
                    let k = dense.cols[x];
                    let coef = &attr(n, "coefficients")?.floats;
                    let intercepts = attr(n, "intercepts").map(|a| a.floats.clone());
                    let classes = coef.len() / k.max(1);
                    if k == 0 || coef.len() != classes * k || classes < 2 {
                        return None;
                    }
                    let post = attr(n, "post_transform").map_or(&b"NONE"[..], |a| &a.s[..]);
                    if attr_i(n, "multi_class", 0) != 0 || !matches!(post, b"NONE" | b"LOGISTIC") {
                        return None;
                    }
                    // coefficients are [classes, k]: as a MatMul, [k, classes].
                    let mut w = vec![0.0; k * classes];
                    for c in 0..classes {
                        for j in 0..k {
                            w[j * classes + c] = coef[c * k + j];
                        }
                    }
                    let bias = match intercepts {
                        Some(b) if b.len() == classes => b,
                        None => vec![0.0; classes],
                        _ => return None,
                    };
                    let probabilities = n.output.get(1)?;
                    dense.steps.push(Step::MatMul {
                        x,
                        w,
                        k,
                        m: classes,
                        bias,
                        relu: false,
                    });
                    dense.cols.push(classes);
                    let mut v = dense.cols.len() - 1;
                    if post == b"LOGISTIC" {
                        dense.steps.push(Step::Sigmoid(v));
                        dense.cols.push(classes);
                        v += 1;
                    }
                    values.insert(probabilities.as_str(), v);
                    continue;
                }
                _ => return None,
            };
            dense.steps.push(step);
            dense.cols.push(cols);
            values.insert(n.output.first()?.as_str(), dense.cols.len() - 1);
        }
        dense.output = *values.get(g.output[0].name.as_str())?;
        dense.mark_live();
        Some(dense)
    }

    /// Marks the steps whose values the output needs, walking back from it.
    fn mark_live(&mut self) {
        let mut needed = vec![false; self.cols.len()];
        needed[self.output] = true;
        for i in (0..self.steps.len()).rev() {
            if !needed[i + 1] {
                continue;
            }
            let mut need = |v: usize| needed[v] = true;
            match &self.steps[i] {
                Step::Binary(_, a, b) => {
                    for o in [a, b] {
                        if let Operand::Value(v) = o {
                            need(*v);
                        }
                    }
                }
                Step::Scale { x, .. }
                | Step::MatMul { x, .. }
                | Step::Relu(x)
                | Step::Sigmoid(x)
                | Step::Softmax(x)
                | Step::Slice(x, _, _) => need(*x),
                Step::Concat(parts) => parts.iter().for_each(|&p| need(p)),
            }
        }
        self.live = needed[1..].to_vec();
    }

    /// Columns of the input.
    pub fn width(&self) -> usize {
        self.cols[0]
    }

    /// Columns of the output.
    pub fn out_cols(&self) -> usize {
        self.cols[self.output]
    }

    /// Runs the graph on `n` rows of `input` (`[n, width]`), returning the
    /// output, `[n, out_cols]`.
    pub fn run(&self, input: Vec<f32>, n: usize) -> Vec<f32> {
        let kernel = *KERNEL.get_or_init(pick);
        // Buffers come from this thread's pool and go back to it: a fresh
        // 50 KB allocation per layer and call cost page faults (glibc hands
        // freed memory at the heap's top back to the kernel).
        let mut pool = POOL.with(|p| std::mem::take(&mut *p.borrow_mut()));
        let mut fresh = |len: usize| {
            let mut b: Vec<f32> = pool.pop().unwrap_or_default();
            b.clear();
            b.reserve(len);
            b
        };
        let mut vals: Vec<Vec<f32>> = Vec::with_capacity(self.cols.len());
        vals.push(input);
        for (i, step) in self.steps.iter().enumerate() {
            let cols = self.cols[i + 1];
            if !self.live[i] {
                vals.push(Vec::new());
                continue;
            }
            let out = match step {
                Step::Scale { x, sub, by, divide } => {
                    let mut out = fresh(n * cols);
                    for row in vals[*x].chunks_exact(cols.max(1)) {
                        let it = row.iter().zip(sub).zip(by);
                        if *divide {
                            out.extend(it.map(|((x, s), b)| (x - s) / b));
                        } else {
                            out.extend(it.map(|((x, s), b)| (x - s) * b));
                        }
                    }
                    out
                }
                Step::Binary(op, a, b) => {
                    fn row<'a>(
                        vals: &'a [Vec<f32>],
                        o: &'a Operand,
                        r: usize,
                        cols: usize,
                    ) -> &'a [f32] {
                        match o {
                            Operand::Value(v) => &vals[*v][r * cols..(r + 1) * cols],
                            Operand::Const(k) => k,
                        }
                    }
                    let mut out = fresh(n * cols);
                    for r in 0..n {
                        let (x, y) = (row(&vals, a, r, cols).iter(), row(&vals, b, r, cols).iter());
                        match op {
                            BinOp::Add => out.extend(x.zip(y).map(|(x, y)| x + y)),
                            BinOp::Sub => out.extend(x.zip(y).map(|(x, y)| x - y)),
                            BinOp::Mul => out.extend(x.zip(y).map(|(x, y)| x * y)),
                            BinOp::Div => out.extend(x.zip(y).map(|(x, y)| x / y)),
                        }
                    }
                    out
                }
                Step::MatMul {
                    x,
                    w,
                    k,
                    m,
                    bias,
                    relu,
                } => {
                    let mut out = fresh(n * m);
                    out.resize(n * m, 0.0);
                    if *m == 1 {
                        // One column: a dot product per row (the kernels'
                        // column blocks would leave it to a scalar loop).
                        let dot = crate::catalog::simd::kernels();
                        for (o, row) in out.iter_mut().zip(vals[*x].chunks_exact(*k)) {
                            *o = bias[0] + dot.dot(row, w);
                        }
                    } else {
                        kernel(&vals[*x], w, bias, n, *k, *m, &mut out);
                    }
                    if *relu {
                        out.iter_mut().for_each(|v| *v = v.max(0.0));
                    }
                    out
                }
                Step::Relu(x) => {
                    let mut out = fresh(n * cols);
                    out.extend(vals[*x].iter().map(|&v| v.max(0.0)));
                    out
                }
                Step::Sigmoid(x) => {
                    let mut out = fresh(n * cols);
                    out.extend(vals[*x].iter().map(|&v| 1.0 / (1.0 + (-v).exp())));
                    out
                }
                Step::Softmax(x) => {
                    let mut out = fresh(n * cols);
                    out.extend_from_slice(&vals[*x]);
                    for row in out.chunks_exact_mut(cols.max(1)) {
                        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0.0;
                        for v in row.iter_mut() {
                            *v = (*v - max).exp();
                            sum += *v;
                        }
                        row.iter_mut().for_each(|v| *v /= sum);
                    }
                    out
                }
                Step::Concat(parts) => {
                    let mut out = fresh(n * cols);
                    for r in 0..n {
                        for &p in parts {
                            let c = self.cols[p];
                            out.extend_from_slice(&vals[p][r * c..(r + 1) * c]);
                        }
                    }
                    out
                }
                Step::Slice(x, from, to) => {
                    let c = self.cols[*x];
                    let mut out = fresh(n * (to - from));
                    for r in 0..n {
                        out.extend_from_slice(&vals[*x][r * c + from..r * c + to]);
                    }
                    out
                }
            };
            vals.push(out);
        }
        let out = vals.swap_remove(self.output);
        pool.extend(vals);
        pool.truncate(POOL_MAX);
        POOL.with(|p| *p.borrow_mut() = pool);
        out
    }
}

thread_local! {
    /// Spare value buffers of this thread's last runs.
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers a thread keeps between runs (a graph's values, a few of them).
const POOL_MAX: usize = 16;

/// `out[n, m] = x[n, k] · w[k, m] + bias` (all row-major).
type Gemm = fn(&[f32], &[f32], &[f32], usize, usize, usize, &mut [f32]);

static KERNEL: std::sync::OnceLock<Gemm> = std::sync::OnceLock::new();

fn pick() -> Gemm {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if avx2 && is_x86_feature_detected!("avx512f") {
            return gemm_avx512;
        }
        if avx2 {
            return gemm_avx2;
        }
    }
    gemm_portable
}

/// The portable loop: each output row accumulated over `k`, one row of `w`
/// at a time (contiguous, so the compiler vectorises it).
fn gemm_portable(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    n: usize,
    k: usize,
    m: usize,
    out: &mut [f32],
) {
    for r in 0..n {
        let o = &mut out[r * m..(r + 1) * m];
        o.copy_from_slice(bias);
        for (j, &xv) in x[r * k..(r + 1) * k].iter().enumerate() {
            for (oc, &wv) in o.iter_mut().zip(&w[j * m..(j + 1) * m]) {
                *oc += xv * wv;
            }
        }
    }
}

/// The bounds every kernel's unchecked accesses stay within.
#[cfg(target_arch = "x86_64")]
fn assert_fits(x: &[f32], w: &[f32], bias: &[f32], n: usize, k: usize, m: usize, out: &[f32]) {
    assert!(x.len() >= n * k && w.len() >= k * m && bias.len() >= m && out.len() >= n * m);
}

#[cfg(target_arch = "x86_64")]
fn gemm_avx2(x: &[f32], w: &[f32], bias: &[f32], n: usize, k: usize, m: usize, out: &mut [f32]) {
    assert_fits(x, w, bias, n, k, m, out);
    // SAFETY: `pick` chose this kernel only after detecting AVX2 and FMA;
    // the bounds were checked above and every access stays within them.
    unsafe { avx2::gemm(x, w, bias, n, k, m, out) }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Rows in blocks of 4, columns in blocks of 16 (2 × 8 lanes): 8
    /// accumulators, 2 loads of `w` and a broadcast of `x` fit AVX2's 16
    /// registers (a 4 × 32 block spilled to the stack and ran no faster
    /// than tract); each `w` load serves 4 rows. Columns past the last whole block of 8
    /// take the scalar loop.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        n: usize,
        k: usize,
        m: usize,
        out: &mut [f32],
    ) {
        let mut r = 0;
        while r < n {
            let rows = (n - r).min(4);
            columns(x, w, bias, r, rows, 0, k, m, out);
            r += rows;
        }
    }

    /// Rows `r..r + rows` (at most 4), columns `c..m`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn columns(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        r: usize,
        rows: usize,
        mut c: usize,
        k: usize,
        m: usize,
        out: &mut [f32],
    ) {
        while c + 8 <= m {
            let lanes = ((m - c) / 8).min(2);
            match (rows, lanes) {
                (4, 2) => block::<4, 2>(x, w, bias, r, c, k, m, out),
                (4, l) => {
                    for i in 0..l {
                        block::<4, 1>(x, w, bias, r, c + 8 * i, k, m, out)
                    }
                }
                (rr, l) => {
                    for j in 0..rr {
                        for i in 0..l {
                            block::<1, 1>(x, w, bias, r + j, c + 8 * i, k, m, out)
                        }
                    }
                }
            }
            c += 8 * lanes;
        }
        for j in r..r + rows {
            for (cc, &b) in bias.iter().enumerate().take(m).skip(c) {
                let mut acc = b;
                for kk in 0..k {
                    acc =
                        (*x.get_unchecked(j * k + kk)).mul_add(*w.get_unchecked(kk * m + cc), acc);
                }
                *out.get_unchecked_mut(j * m + cc) = acc;
            }
        }
    }

    /// `R` rows × `L` vectors of 8 columns, from row `r` and column `c`.
    /// Written out for the shapes used: an array of accumulators is
    /// spilled to the stack by the compiler, named ones stay in registers.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize, const L: usize>(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        r: usize,
        c: usize,
        k: usize,
        m: usize,
        out: &mut [f32],
    ) {
        let (xp, wp, bp, op) = (
            x.as_ptr(),
            w.as_ptr().add(c),
            bias.as_ptr().add(c),
            out.as_mut_ptr(),
        );
        match (R, L) {
            (4, 2) => {
                let (b0, b1) = (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)));
                let (mut a00, mut a01, mut a10, mut a11) = (b0, b1, b0, b1);
                let (mut a20, mut a21, mut a30, mut a31) = (b0, b1, b0, b1);
                let (x0, x1, x2, x3) = (
                    xp.add(r * k),
                    xp.add((r + 1) * k),
                    xp.add((r + 2) * k),
                    xp.add((r + 3) * k),
                );
                for kk in 0..k {
                    let wr = wp.add(kk * m);
                    let (w0, w1) = (_mm256_loadu_ps(wr), _mm256_loadu_ps(wr.add(8)));
                    let v = _mm256_broadcast_ss(&*x0.add(kk));
                    a00 = _mm256_fmadd_ps(v, w0, a00);
                    a01 = _mm256_fmadd_ps(v, w1, a01);
                    let v = _mm256_broadcast_ss(&*x1.add(kk));
                    a10 = _mm256_fmadd_ps(v, w0, a10);
                    a11 = _mm256_fmadd_ps(v, w1, a11);
                    let v = _mm256_broadcast_ss(&*x2.add(kk));
                    a20 = _mm256_fmadd_ps(v, w0, a20);
                    a21 = _mm256_fmadd_ps(v, w1, a21);
                    let v = _mm256_broadcast_ss(&*x3.add(kk));
                    a30 = _mm256_fmadd_ps(v, w0, a30);
                    a31 = _mm256_fmadd_ps(v, w1, a31);
                }
                for (i, (lo, hi)) in [(a00, a01), (a10, a11), (a20, a21), (a30, a31)]
                    .into_iter()
                    .enumerate()
                {
                    let o = op.add((r + i) * m + c);
                    _mm256_storeu_ps(o, lo);
                    _mm256_storeu_ps(o.add(8), hi);
                }
            }
            (4, 1) => {
                let b = _mm256_loadu_ps(bp);
                let (mut a0, mut a1, mut a2, mut a3) = (b, b, b, b);
                for kk in 0..k {
                    let wv = _mm256_loadu_ps(wp.add(kk * m));
                    a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*xp.add(r * k + kk)), wv, a0);
                    a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*xp.add((r + 1) * k + kk)), wv, a1);
                    a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*xp.add((r + 2) * k + kk)), wv, a2);
                    a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*xp.add((r + 3) * k + kk)), wv, a3);
                }
                for (i, a) in [a0, a1, a2, a3].iter().enumerate() {
                    _mm256_storeu_ps(op.add((r + i) * m + c), *a);
                }
            }
            _ => {
                // One row, one vector (what is left at the edges).
                let mut a = _mm256_loadu_ps(bp);
                for kk in 0..k {
                    a = _mm256_fmadd_ps(
                        _mm256_broadcast_ss(&*xp.add(r * k + kk)),
                        _mm256_loadu_ps(wp.add(kk * m)),
                        a,
                    );
                }
                _mm256_storeu_ps(op.add(r * m + c), a);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn gemm_avx512(x: &[f32], w: &[f32], bias: &[f32], n: usize, k: usize, m: usize, out: &mut [f32]) {
    assert_fits(x, w, bias, n, k, m, out);
    // SAFETY: `pick` chose this kernel only after detecting AVX-512F (and
    // AVX2 and FMA); the bounds were checked above.
    unsafe { avx512::gemm(x, w, bias, n, k, m, out) }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// 4 rows × 32 columns (2 × 16 lanes) a block — 8 accumulators of
    /// AVX-512's 32 registers — then the AVX2 code for the columns left.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn gemm(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        n: usize,
        k: usize,
        m: usize,
        out: &mut [f32],
    ) {
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        let mut r = 0;
        while r < n {
            let rows = (n - r).min(4);
            let mut c = 0;
            if rows == 4 {
                while c + 32 <= m {
                    let (wp, bp) = (w.as_ptr().add(c), bias.as_ptr().add(c));
                    let (b0, b1) = (_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(16)));
                    let (mut a00, mut a01, mut a10, mut a11) = (b0, b1, b0, b1);
                    let (mut a20, mut a21, mut a30, mut a31) = (b0, b1, b0, b1);
                    let (x0, x1, x2, x3) = (
                        xp.add(r * k),
                        xp.add((r + 1) * k),
                        xp.add((r + 2) * k),
                        xp.add((r + 3) * k),
                    );
                    for kk in 0..k {
                        let wr = wp.add(kk * m);
                        let (w0, w1) = (_mm512_loadu_ps(wr), _mm512_loadu_ps(wr.add(16)));
                        let v = _mm512_set1_ps(*x0.add(kk));
                        a00 = _mm512_fmadd_ps(v, w0, a00);
                        a01 = _mm512_fmadd_ps(v, w1, a01);
                        let v = _mm512_set1_ps(*x1.add(kk));
                        a10 = _mm512_fmadd_ps(v, w0, a10);
                        a11 = _mm512_fmadd_ps(v, w1, a11);
                        let v = _mm512_set1_ps(*x2.add(kk));
                        a20 = _mm512_fmadd_ps(v, w0, a20);
                        a21 = _mm512_fmadd_ps(v, w1, a21);
                        let v = _mm512_set1_ps(*x3.add(kk));
                        a30 = _mm512_fmadd_ps(v, w0, a30);
                        a31 = _mm512_fmadd_ps(v, w1, a31);
                    }
                    for (i, (lo, hi)) in [(a00, a01), (a10, a11), (a20, a21), (a30, a31)]
                        .into_iter()
                        .enumerate()
                    {
                        let o = op.add((r + i) * m + c);
                        _mm512_storeu_ps(o, lo);
                        _mm512_storeu_ps(o.add(16), hi);
                    }
                    c += 32;
                }
            }
            super::avx2::columns(x, w, bias, r, rows, c, k, m, out);
            r += rows;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn constant(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            float_data: values.to_vec(),
            ..Default::default()
        }
    }

    fn int_constant(name: &str, v: i64) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: vec![1],
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            int64_data: vec![v],
            ..Default::default()
        }
    }

    fn graph(
        nodes: Vec<NodeProto>,
        consts: Vec<TensorProto>,
        width: i64,
        out: &str,
    ) -> pb::ModelProto {
        use pb::tensor_shape_proto::{dimension::Value as D, Dimension};
        let info = |name: &str| pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: pb::tensor_proto::DataType::Float as i32,
                    shape: Some(pb::TensorShapeProto {
                        dim: vec![
                            Dimension {
                                value: Some(D::DimParam("N".into())),
                                ..Default::default()
                            },
                            Dimension {
                                value: Some(D::DimValue(width)),
                                ..Default::default()
                            },
                        ],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        pb::ModelProto {
            graph: Some(pb::GraphProto {
                node: nodes,
                initializer: consts,
                input: vec![info("x")],
                output: vec![pb::ValueInfoProto {
                    name: out.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Folds (scaler, Relu after a product, a cast, the slice of a
    /// concatenation) never change a value something else still reads.
    #[test]
    fn folds_leave_values_read_twice_alone() {
        let w = [1.0, -1.0, 0.5, -2.0, 0.25, 1.5];
        let consts = vec![
            constant("w", &[2, 3], &w),
            constant("a", &[2], &[0.5, -1.0]),
            constant("b", &[2], &[2.0, 3.0]),
            constant("v", &[3, 1], &[1.0, 2.0, -1.0]),
        ];
        // c = x - a (read twice), d = c * b; y = d · w (read as y and,
        // through an Identity, by the Relu); out = [y + relu(y), (y+relu(y)) · v][1]
        let nodes = vec![
            node("Sub", &["x", "a"], "c"),
            node("Mul", &["c", "b"], "d"),
            node("Add", &["c", "d"], "e"),
            node("MatMul", &["e", "w"], "y"),
            node("Identity", &["y"], "z"),
            node("Relu", &["z"], "r"),
            node("Add", &["y", "r"], "s"),
            node("MatMul", &["s", "v"], "t"),
            node("Concat", &["s", "t"], "st"),
            NodeProto {
                attribute: vec![pb::AttributeProto {
                    name: "axis".into(),
                    i: 1,
                    ..Default::default()
                }],
                ..node("Concat", &["s", "t"], "st")
            },
        ];
        // The first Concat has no axis (0: rows): use the second, axis 1.
        let mut nodes = nodes;
        nodes.remove(8);
        nodes.push(node("Slice", &["st", "from", "to", "axes"], "out"));
        let mut consts = consts;
        consts.extend([
            int_constant("from", 3),
            int_constant("to", 4),
            int_constant("axes", 1),
        ]);
        let dense = Dense::from_proto(&graph(nodes, consts, 2, "out")).expect("a dense graph");
        let n = 5;
        let x: Vec<f32> = (0..n * 2).map(|i| i as f32 * 0.7 - 3.0).collect();
        let got = dense.run(x.clone(), n);
        assert_eq!(got.len(), n);
        for r in 0..n {
            let c = [x[r * 2] - 0.5, x[r * 2 + 1] + 1.0];
            let e = [c[0] + c[0] * 2.0, c[1] + c[1] * 3.0];
            let y: Vec<f32> = (0..3).map(|j| e[0] * w[j] + e[1] * w[3 + j]).collect();
            let s: Vec<f32> = y.iter().map(|&v| v + v.max(0.0)).collect();
            let t = s[0] - s[2] + 2.0 * s[1];
            assert!(
                (got[r] - t).abs() <= 1e-4 * t.abs().max(1.0),
                "row {r}: {} vs {t}",
                got[r]
            );
        }
        // The Relu had two readers of its input's value: not folded.
        assert!(dense.steps.iter().any(|s| matches!(s, Step::Relu(_))));
        // The scaler's Sub is read twice: not folded into a Scale.
        assert!(!dense.steps.iter().any(|s| matches!(s, Step::Scale { .. })));
    }

    /// MatMul → Relu → Add(c): the constant is added after the Relu, not
    /// folded into the product's bias under it.
    #[test]
    fn a_bias_after_a_relu_is_not_folded_under_it() {
        let consts = vec![
            constant("w", &[2, 2], &[1.0, -1.0, -1.0, 1.0]),
            constant("c", &[2], &[0.5, 5.0]),
        ];
        let nodes = vec![
            node("MatMul", &["x", "w"], "y"),
            node("Relu", &["y"], "r"),
            node("Add", &["r", "c"], "out"),
        ];
        let dense = Dense::from_proto(&graph(nodes, consts, 2, "out")).expect("a dense graph");
        // x = [1, 3]: xW = [-2, 2]; relu → [0, 2]; + c → [0.5, 7].
        // Folded under the Relu it would be relu([-1.5, 7]) = [0, 7].
        let got = dense.run(vec![1.0, 3.0], 1);
        assert_eq!(got, [0.5, 7.0]);
    }

    /// The shipped models' shape: scaler, products with Relu, one column
    /// out, sigmoid, [1 - p, p], column 1 — folded to one pass per layer.
    #[test]
    fn the_exported_mlp_shape_is_folded() {
        let consts = vec![
            constant("off", &[2], &[1.0, 2.0]),
            constant("scale", &[2], &[0.5, 0.25]),
            constant(
                "w1",
                &[2, 8],
                &(0..16).map(|i| i as f32 * 0.1 - 0.8).collect::<Vec<_>>(),
            ),
            constant("b1", &[1, 8], &[0.1; 8]),
            constant(
                "w2",
                &[8, 1],
                &(0..8).map(|i| 0.3 - i as f32 * 0.1).collect::<Vec<_>>(),
            ),
            constant("b2", &[1, 1], &[0.05]),
            constant("unity", &[], &[1.0]),
            int_constant("from", 1),
            int_constant("to", 2),
            int_constant("axes", 1),
        ];
        let mut cast = node("Cast", &["v"], "vc");
        cast.attribute.push(pb::AttributeProto {
            name: "to".into(),
            i: 1,
            ..Default::default()
        });
        let mut concat = node("Concat", &["neg", "p"], "probs");
        concat.attribute.push(pb::AttributeProto {
            name: "axis".into(),
            i: 1,
            ..Default::default()
        });
        let nodes = vec![
            node("Sub", &["x", "off"], "c"),
            node("Mul", &["c", "scale"], "v"),
            cast,
            node("MatMul", &["vc", "w1"], "m1"),
            node("Add", &["m1", "b1"], "a1"),
            node("Relu", &["a1"], "h1"),
            node("MatMul", &["h1", "w2"], "m2"),
            node("Add", &["m2", "b2"], "a2"),
            node("Sigmoid", &["a2"], "p"),
            node("Sub", &["unity", "p"], "neg"),
            concat,
            node("Slice", &["probs", "from", "to", "axes"], "score"),
        ];
        let dense = Dense::from_proto(&graph(nodes, consts, 2, "score")).expect("a dense graph");
        let live: Vec<&Step> = dense
            .steps
            .iter()
            .zip(&dense.live)
            .filter(|(_, l)| **l)
            .map(|(s, _)| s)
            .collect();
        assert!(
            matches!(
                live.as_slice(),
                [
                    Step::Scale { .. },
                    Step::MatMul { relu: true, .. },
                    Step::MatMul {
                        relu: false,
                        m: 1,
                        ..
                    },
                    Step::Sigmoid(_)
                ]
            ),
            "{live:?}"
        );
        let n = 6;
        let x: Vec<f32> = (0..n * 2).map(|i| i as f32 * 0.9 - 4.0).collect();
        let got = dense.run(x.clone(), n);
        for r in 0..n {
            let v = [(x[r * 2] - 1.0) * 0.5, (x[r * 2 + 1] - 2.0) * 0.25];
            let h: Vec<f32> = (0..8)
                .map(|j| {
                    (v[0] * (j as f32 * 0.1 - 0.8) + v[1] * ((8 + j) as f32 * 0.1 - 0.8) + 0.1)
                        .max(0.0)
                })
                .collect();
            let z: f32 = h
                .iter()
                .enumerate()
                .map(|(j, h)| h * (0.3 - j as f32 * 0.1))
                .sum::<f32>()
                + 0.05;
            let p = 1.0 / (1.0 + (-z).exp());
            assert!((got[r] - p).abs() <= 1e-5, "row {r}: {} vs {p}", got[r]);
        }
    }

    /// A binary LinearClassifier (skl2onnx's logistic regression: scaler,
    /// classifier with a logistic post-transform, column 1 of its
    /// probabilities) runs as one dot per row and one sigmoid; read twice,
    /// its probabilities keep both columns.
    #[test]
    fn a_binary_linear_classifiers_positive_class_is_one_dot() {
        let classifier = |probs: &str| {
            let mut n = node("LinearClassifier", &["x"], "label");
            n.domain = "ai.onnx.ml".into();
            n.output.push(probs.into());
            let f = |name: &str, v: &[f32]| pb::AttributeProto {
                name: name.into(),
                floats: v.to_vec(),
                ..Default::default()
            };
            n.attribute = vec![
                f("coefficients", &[-0.5, 1.5, -2.0, 0.5, -1.5, 2.0]),
                f("intercepts", &[0.25, -0.25]),
                pb::AttributeProto {
                    name: "post_transform".into(),
                    s: b"LOGISTIC".to_vec(),
                    ..Default::default()
                },
            ];
            n
        };
        let consts = || {
            vec![
                int_constant("from", 1),
                int_constant("to", 2),
                int_constant("axes", 1),
            ]
        };
        let slice = node("Slice", &["probs", "from", "to", "axes"], "score");
        let folded = Dense::from_proto(&graph(
            vec![classifier("probs"), slice.clone()],
            consts(),
            3,
            "score",
        ))
        .expect("a dense graph");
        assert!(
            matches!(
                folded.steps.as_slice(),
                [Step::MatMul { m: 1, .. }, Step::Sigmoid(_)]
            ),
            "{:?}",
            folded.steps
        );
        let n = 7;
        let x: Vec<f32> = (0..n * 3).map(|i| i as f32 * 0.6 - 5.0).collect();
        let got = folded.run(x.clone(), n);
        for r in 0..n {
            let z = 0.5 * x[r * 3] - 1.5 * x[r * 3 + 1] + 2.0 * x[r * 3 + 2] - 0.25;
            let p = 1.0 / (1.0 + (-z).exp());
            assert!((got[r] - p).abs() <= 1e-6, "row {r}: {} vs {p}", got[r]);
        }
        // The probabilities also read by an Add: both columns stay.
        let twice = Dense::from_proto(&graph(
            vec![
                classifier("probs"),
                slice,
                node("Add", &["probs", "probs"], "both"),
            ],
            consts(),
            3,
            "score",
        ))
        .expect("a dense graph");
        assert!(twice.steps.iter().any(|s| matches!(s, Step::Slice(..))));
        for (a, b) in twice.run(x, n).iter().zip(&got) {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn the_kernels_agree_with_a_plain_triple_loop() {
        for (n, k, m) in [
            (1, 1, 1),
            (5, 3, 8),
            (7, 40, 128),
            (100, 128, 64),
            (9, 64, 1),
            (4, 6, 2),
            (6, 13, 37),
            (8, 40, 70),
            (4, 5, 48),
        ] {
            let x: Vec<f32> = (0..n * k)
                .map(|i| ((i * 37) % 17) as f32 / 7.0 - 1.0)
                .collect();
            let w: Vec<f32> = (0..k * m)
                .map(|i| ((i * 11) % 13) as f32 / 5.0 - 1.2)
                .collect();
            let b: Vec<f32> = (0..m).map(|i| i as f32 * 0.1).collect();
            let mut want = vec![0f32; n * m];
            for r in 0..n {
                for c in 0..m {
                    let mut s = b[c] as f64;
                    for j in 0..k {
                        s += x[r * k + j] as f64 * w[j * m + c] as f64;
                    }
                    want[r * m + c] = s as f32;
                }
            }
            let mut kernels = vec![gemm_portable as Gemm, pick()];
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                kernels.push(gemm_avx2);
            }
            for kernel in kernels {
                let mut got = vec![0f32; n * m];
                kernel(&x, &w, &b, n, k, m, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                        "{n}x{k}x{m}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
