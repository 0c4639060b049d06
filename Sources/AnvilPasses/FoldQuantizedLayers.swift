import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilOps

/// Explicit quantization, as TensorRT honours it: the QuantizeLinear / DequantizeLinear
/// pairs a quantizer wrote (ONNX Runtime's quantize_static, PyTorch, NNCF) are folded
/// into the layers between them, which then compute on 8-bit integers:
///
/// - DQ(x) → Conv(DQ(w), DQ(b)?) → [Relu | Clip] → Q becomes QLinearConv (the standard op),
///   or Anvil's FusedQLinearConv where the activation changes the result (a Relu whose
///   quantization range reaches below 0, a Clip inside it);
/// - DQ(a) + DQ(b) → [Relu] → Q, where a is a quantized convolution read only there,
///   becomes that convolution with the residual b summed in its requantization (after the
///   convolution's own output quantization, which the kernel rounds and saturates in its
///   post-ops, so the result is the model's);
/// - DQ(a) → MatMul or Gemm(DQ(w), DQ(b)?) → [Relu | Clip] → Q with constant int8 weights
///   becomes QLinearMatMul, or Anvil's FusedQLinearMatMul with the int32 bias (and activation);
/// - DQ(x) → MaxPool → Q with the same scale and zero point becomes MaxPool on x.
///
/// ONNX Runtime's QOperator form gets the same: QLinearAdd of a QLinearConv's output becomes
/// its residual, QGemm a FusedQLinearMatMul, QLinearGlobalAveragePool the standard
/// DequantizeLinear → GlobalAveragePool → QuantizeLinear (`FoldQuantizedLayers+Microsoft`).
///
/// The weights' DequantizeLinear is left in place for the convolution to read the int8
/// weights; the pass runs before constant folding, which would otherwise turn it into
/// float weights. What it does not fold keeps its exact float semantics.
public struct FoldQuantizedLayers: Pass {
    public let name = "fold-quantized-layers"
    public let summary = "fold QuantizeLinear/DequantizeLinear pairs into INT8 convolutions (residual sum, ReLU) and max pooling"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool {
        let weights = try Self.quantizeConstants(context)
        return try RewriteDriver([Self.convolution, Self.matmul, Self.residual, Self.movement, Self.lookup, Self.floatProduct, Self.sinkDequantize, Self.clampIntoConvolution]
                                 + Self.microsoftRules).run(context)
            || weights
    }

    /// QuantizeLinear of constant float weights (PyTorch's QAT export: DQ(Q(w))) becomes the
    /// int8 constant it computes, so the layer reads int8 weights as from other quantizers.
    static func quantizeConstants(_ context: PassContext) throws -> Bool {
        let graph = context.graph
        var kept: [Node] = [], changed = false
        for node in graph.nodes {
            guard node.opType == "QuantizeLinear", node.domain.isEmpty, node.outputs.count == 1,
                  node.inputs.allSatisfy({ $0.isEmpty || graph.initializers[$0] != nil }),
                  let def = OpRegistry.lookup(domain: "", opType: node.opType, opset: context.opset("")),
                  let value = try? def.evaluate(EvalContext(node: node, opset: context.opset(""), inputs: node.inputs.map { $0.isEmpty ? nil : graph.initializers[$0] }) { _, _ in [] }).first else {
                kept.append(node)
                continue
            }
            graph.setInitializer(node.outputs[0], value)
            context.count("constant weights quantized")
            changed = true
        }
        graph.nodes = kept
        return changed
    }

    /// One quantization of a tensor: its scale and zero point names and values.
    struct Quantization {
        var scale: String
        var zero: String?
        var scaleValue: Double
        var zeroValue: Int64
        var type: DataType

        /// The quantized range's lower end in real units.
        var lowest: Double { (Double(type == .uint8 ? 0 : -128) - Double(zeroValue)) * scaleValue }
        var highest: Double { (Double(type == .uint8 ? 255 : 127) - Double(zeroValue)) * scaleValue }

        func same(as other: Quantization) -> Bool { scaleValue == other.scaleValue && zeroValue == other.zeroValue && type == other.type }
    }

    /// The per-tensor parameters of a QuantizeLinear or DequantizeLinear: one finite positive
    /// float scale and one 8-bit zero point (absent: uint8 0), constant. `type` is the
    /// quantized element type when known from elsewhere.
    static func parameters(_ node: Node, _ ctx: RewriteContext, type known: DataType?) -> Quantization? {
        guard node.domain.isEmpty, node.inputs.count >= 2, let s = ctx.constant(node.inputs[1]), s.dataType == .float, s.count == 1,
              let scale = s.doubles.first, scale.isFinite, scale > 0,
              (try? AttributeReader(node: node).int("block_size", 0)) == 0, (try? AttributeReader(node: node).int("saturate", 1)) == 1 else { return nil }
        var zero: Int64 = 0, type = known ?? .uint8
        if node.inputs.count > 2, !node.inputs[2].isEmpty {
            guard let z = ctx.constant(node.inputs[2]), z.count == 1 else { return nil }
            zero = z.int64s[0]
            type = z.dataType
        } else if let requested = try? AttributeReader(node: node).int("output_dtype"), node.opType == "QuantizeLinear" {
            guard let t = DataType(rawValue: Int32(clamping: requested)) else { return nil }
            type = t
        }
        guard [.uint8, .int8].contains(type), known.map({ $0 == type }) ?? true else { return nil }
        return Quantization(scale: node.inputs[1], zero: node.inputs.count > 2 && !node.inputs[2].isEmpty ? node.inputs[2] : nil,
                            scaleValue: scale, zeroValue: zero, type: type)
    }

    /// The DequantizeLinear producing `value` from an 8-bit tensor, with its parameters.
    static func dequantized(_ value: String, _ ctx: RewriteContext) -> (node: Node, input: String, q: Quantization)? {
        guard let dq = ctx.producer(value), dq.opType == "DequantizeLinear", let type = ctx.type(dq.inputs[0]).elementType,
              let q = parameters(dq, ctx, type: type) else { return nil }
        return (dq, dq.inputs[0], q)
    }

    /// A zero point's name: the node's own, or a new constant 0 of `type`.
    static func zeroName(_ q: Quantization, _ ctx: RewriteContext, _ initializers: inout [(String, Tensor)], like: String) throws -> String {
        if let z = q.zero { return z }
        let name = ctx.graph.freshName("\(like)_zero_point")
        initializers.append((name, try Tensor(q.type, shape: [], int64s: [0])))
        return name
    }

    /// The activation between a layer and its QuantizeLinear: nil when there is none; `drop` when
    /// the quantization's own saturation computes it (a Relu or Clip whose bounds lie outside the
    /// quantized range); else its fused attributes.
    enum ActivationFold { case none, drop, fused([String: Attribute]) }
    static func activation(_ node: Node?, _ q: Quantization, _ ctx: RewriteContext) -> ActivationFold? {
        guard let node else { return ActivationFold.none }
        guard node.domain.isEmpty else { return nil }
        var lo = -Double.infinity, hi = Double.infinity
        switch node.opType {
        case "Relu": lo = 0
        case "Clip":
            if let a = try? AttributeReader(node: node), ctx.pass.opset() < 11 {
                lo = Double((try? a.float("min", -.greatestFiniteMagnitude)) ?? -.greatestFiniteMagnitude)
                hi = Double((try? a.float("max", .greatestFiniteMagnitude)) ?? .greatestFiniteMagnitude)
            } else {
                for (i, bound) in [(1, "min"), (2, "max")] where node.inputs.count > i && !node.inputs[i].isEmpty {
                    guard let v = ctx.constant(node.inputs[i]), v.count == 1, let d = v.doubles.first else { return nil }
                    if bound == "min" { lo = d } else { hi = d }
                }
            }
        default: return nil
        }
        if lo <= q.lowest && hi >= q.highest { return .drop }
        if node.opType == "Relu" { return .fused(["activation": .string("Relu")]) }
        return .fused(["activation": .string("Clip"), "activation_alpha": .float(Float(lo)), "activation_beta": .float(Float(hi))])
    }

    /// The node before a QuantizeLinear and the activation between them, each read only by the next.
    static func layerBefore(_ q: Node, _ ctx: RewriteContext) -> (layer: Node, activation: Node?)? {
        guard let p = ctx.producer(q.inputs[0]), ctx.uses.soleConsumer(p.outputs[0]) === q else { return nil }
        if p.domain.isEmpty, p.opType == "Relu" || p.opType == "Clip", let inner = ctx.producer(p.inputs[0]), ctx.uses.soleConsumer(inner.outputs[0]) === p {
            return (inner, p)
        }
        return (p, nil)
    }

    /// x · Sigmoid(x) before a QuantizeLinear (NNCF's YOLO quantizes its SiLU outputs so): the
    /// node producing x (read by the two alone) and the Sigmoid and Mul.
    static func siluBefore(_ q: Node, _ ctx: RewriteContext) -> (layer: Node, activation: [Node])? {
        guard !ctx.pass.standardOnly, let mul = ctx.producer(q.inputs[0]), mul.opType == "Mul", mul.domain.isEmpty, mul.inputs.count == 2,
              ctx.uses.soleConsumer(mul.outputs[0]) === q else { return nil }
        for side in [0, 1] {
            guard let sigmoid = ctx.producer(mul.inputs[side]), sigmoid.opType == "Sigmoid", sigmoid.domain.isEmpty, sigmoid.inputs[0] == mul.inputs[1 - side],
                  ctx.uses.soleConsumer(sigmoid.outputs[0]) === mul, let layer = ctx.producer(sigmoid.inputs[0]),
                  !ctx.uses.graphOutputs.contains(layer.outputs[0]), let readers = ctx.uses.consumers[layer.outputs[0]], readers.count == 2,
                  readers.contains(where: { $0 === sigmoid }), readers.contains(where: { $0 === mul }) else { continue }
            return (layer, [sigmoid, mul])
        }
        return nil
    }

    static let convolution = RewriteRule("quantized conv", roots: ["QuantizeLinear"]) { q, ctx in
        let silu = siluBefore(q, ctx)
        guard let (end, act) = silu.map({ ($0.layer, nil as Node?) }) ?? layerBefore(q, ctx),
              let (conv, affine) = end.opType == "Conv" ? (end, nil) : affineAfterConvolution(end, ctx),
              conv.opType == "Conv", conv.domain.isEmpty, conv.outputs.count == 1, conv.inputs.count >= 2,
              let x = dequantized(conv.inputs[0], ctx), let out = parameters(q, ctx, type: nil),
              let wdq = ctx.producer(conv.inputs[1]), wdq.opType == "DequantizeLinear", wdq.domain.isEmpty, wdq.inputs.count >= 2,
              let w = ctx.constant(wdq.inputs[0]), w.dataType == .int8, w.rank >= 3, let ws = ctx.constant(wdq.inputs[1]), ws.dataType == .float,
              ws.count == 1 || (ws.count == w.shape[0] && ws.rank == 1 && (try? AttributeReader(node: wdq).int("axis", 1)) == 0),
              let fusedActivation = silu == nil ? activation(act, out, ctx) : .fused(["activation": .string("SiLU")]) else { return nil }
        if wdq.inputs.count > 2, !wdq.inputs[2].isEmpty {
            guard let z = ctx.constant(wdq.inputs[2]), z.dataType == .int8, z.int64s.allSatisfy({ $0 == 0 }) else { return nil }
        }
        if case .fused = fusedActivation, ctx.pass.standardOnly { return nil }
        var initializers: [(String, Tensor)] = []
        let cout = w.shape[0]
        var weightScales = wdq.inputs[1], wz = wdq.inputs.count > 2 && !wdq.inputs[2].isEmpty ? wdq.inputs[2] : ""
        let bias: String
        if let affine {
            // y = a · conv + c per channel: the weight scales become a · w_scale, the bias a · b + c.
            guard affine.factor.count == cout, affine.factor.allSatisfy({ $0 > 0 && $0.isFinite }),
                  let b = realBias(conv.inputs.count > 2 ? conv.inputs[2] : nil, channels: cout, ctx) else { return nil }
            let perChannel = (0..<cout).map { ws.doubles[ws.count == 1 ? 0 : $0] * affine.factor[$0] }
            weightScales = ctx.graph.freshName("\(conv.name)_weight_scale")
            initializers.append((weightScales, try Tensor(floats: perChannel.map { Float($0) }, shape: [cout])))
            guard let b = try int32Bias((0..<cout).map { affine.factor[$0] * b[$0] + affine.shift[$0] }, scales: perChannel.map { $0 * x.q.scaleValue },
                                        ctx, &initializers, like: conv.name) else { return nil }
            (bias, wz) = (b, "")
        } else {
            guard let b = try accumulatorBias(conv.inputs.count > 2 ? conv.inputs[2] : nil, channels: cout, scales: ws.doubles.map { $0 * x.q.scaleValue },
                                              ctx, &initializers, like: conv.name) else { return nil }
            bias = b
        }
        if wz.isEmpty {
            wz = ctx.graph.freshName("\(conv.name)_weight_zero_point")
            initializers.append((wz, try Tensor(.int8, shape: affine == nil ? [] : [cout], int64s: Array(repeating: 0, count: affine == nil ? 1 : cout))))
        }
        let inputs = [x.input, x.q.scale, try zeroName(x.q, ctx, &initializers, like: x.input), wdq.inputs[0], weightScales, wz,
                      out.scale, try zeroName(out, ctx, &initializers, like: q.outputs[0]), bias]
        let trimmed = bias.isEmpty ? Array(inputs.dropLast()) : inputs
        let removed = [conv] + (affine?.nodes ?? []) + (act.map { [$0] } ?? []) + (silu?.activation ?? []) + [q]
        let fusedFrom = removed.flatMap(\.fusedFrom)
        let node: Node
        if case .fused(let extra) = fusedActivation {
            ctx.pass.useAnvilDomain()
            node = Node(name: conv.name, opType: "FusedQLinearConv", domain: anvilDomain, inputs: trimmed, outputs: q.outputs,
                        attributes: conv.attributes.merging(extra) { $1 }, fusedFrom: fusedFrom)
        } else {
            node = Node(name: conv.name, opType: "QLinearConv", inputs: trimmed, outputs: q.outputs, attributes: conv.attributes, fusedFrom: fusedFrom)
        }
        return Patch(statistic: "DQ → Conv → Q → QLinearConv", remove: removed, add: [node], initializers: initializers)
    }

    /// The int32 bias of a quantized layer in accumulator units: ONNX Runtime's DequantizeLinear of
    /// an int32 constant with exactly that scale as it is, a float constant rounded; "" when absent,
    /// nil when neither.
    static func accumulatorBias(_ value: String?, channels: Int, scales: [Double], _ ctx: RewriteContext,
                                _ initializers: inout [(String, Tensor)], like: String) throws -> String? {
        guard let value, !value.isEmpty else { return "" }
        if let bdq = ctx.producer(value), bdq.opType == "DequantizeLinear", let b = ctx.constant(bdq.inputs[0]), b.dataType == .int32,
           b.count == channels, let bs = ctx.constant(bdq.inputs[1]), bs.count == 1 || bs.count == channels,
           zip(bs.doubles, bs.count == 1 ? [scales[0]] : scales).allSatisfy({ abs($0 - $1) <= 1e-6 * $1 }),
           bdq.inputs.count < 3 || bdq.inputs[2].isEmpty || ctx.constant(bdq.inputs[2])?.int64s.allSatisfy({ $0 == 0 }) == true {
            return bdq.inputs[0]
        }
        guard let b = ctx.constant(value), b.dataType == .float, b.count == channels else { return nil }
        return try int32Bias(b.doubles, scales: scales, ctx, &initializers, like: like)
    }

    /// A new int32 bias constant: real bias values rounded in accumulator units (`scales`, one or
    /// one per channel); nil when one does not fit in 31 bits.
    static func int32Bias(_ real: [Double], scales: [Double], _ ctx: RewriteContext, _ initializers: inout [(String, Tensor)], like: String) throws -> String? {
        let values = real.enumerated().map { i, v in (v / scales[scales.count == 1 ? 0 : i]).rounded() }
        guard values.allSatisfy({ abs($0) < Double(1 << 31) }) else { return nil }
        let name = ctx.graph.freshName("\(like)_bias_int32")
        initializers.append((name, try Tensor(.int32, shape: [real.count], int64s: values.map { Int64($0) })))
        return name
    }

    /// A convolution's bias in real units: a float constant, or the DequantizeLinear of an int32
    /// one with a constant scale; zeros when absent; nil when neither.
    static func realBias(_ value: String?, channels: Int, _ ctx: RewriteContext) -> [Double]? {
        guard let value, !value.isEmpty else { return Array(repeating: 0, count: channels) }
        if let b = ctx.constant(value), b.dataType == .float, b.count == channels { return b.doubles }
        guard let bdq = ctx.producer(value), bdq.opType == "DequantizeLinear", let b = ctx.constant(bdq.inputs[0]), b.count == channels,
              let s = ctx.constant(bdq.inputs[1]), s.count == 1 || s.count == channels,
              bdq.inputs.count < 3 || bdq.inputs[2].isEmpty || ctx.constant(bdq.inputs[2])?.int64s.allSatisfy({ $0 == 0 }) == true else { return nil }
        return b.doubles.enumerated().map { i, v in v * s.doubles[s.count == 1 ? 0 : i] }
    }

    /// A per-channel affine chain after a convolution, each node read only by the next: Mul,
    /// Div, Add or Sub by a constant (a scalar or one value per channel, [C, 1, …]) and
    /// BatchNormalization with constant parameters (PyTorch's QAT export writes
    /// Conv → Div → BatchNormalization). `end` is the chain's last node; the result is the
    /// convolution, the chain's nodes and y = factor · conv + shift per channel.
    static func affineAfterConvolution(_ end: Node, _ ctx: RewriteContext) -> (Node, (nodes: [Node], factor: [Double], shift: [Double])?)? {
        var chain: [Node] = [], node = end
        while node.opType != "Conv" {
            guard node.domain.isEmpty, ["Mul", "Div", "Add", "Sub", "BatchNormalization"].contains(node.opType), node.outputs.count == 1,
                  chain.count < 4, let data = node.opType == "BatchNormalization" ? node.inputs.first : node.inputs.first(where: { ctx.constant($0) == nil }),
                  let p = ctx.producer(data), ctx.uses.soleConsumer(p.outputs[0]) === node else { return nil }
            chain.insert(node, at: 0)
            node = p
        }
        guard let w = ctx.producer(node.inputs[1]).flatMap({ ctx.constant($0.inputs[0]) }) ?? ctx.constant(node.inputs[1]), w.rank >= 3 else { return nil }
        let channels = w.shape[0]
        var factor = [Double](repeating: 1, count: channels), shift = [Double](repeating: 0, count: channels)
        func perChannel(_ name: String) -> [Double]? {
            guard let t = ctx.constant(name), t.dataType == .float else { return nil }
            if t.count == 1 { return Array(repeating: t.doubles[0], count: channels) }
            // [C], [C, 1, …] or [1, C, 1, …] (BatchNormalization's are [C]).
            guard t.count == channels, t.shape.filter({ $0 != 1 }) == [channels] else { return nil }
            return t.doubles
        }
        for n in chain {
            if n.opType == "BatchNormalization" {
                guard n.inputs.count >= 5, let g = perChannel(n.inputs[1]), let b = perChannel(n.inputs[2]), let mean = perChannel(n.inputs[3]),
                      let variance = perChannel(n.inputs[4]), let eps = try? AttributeReader(node: n).float("epsilon", 1e-5) else { return nil }
                for c in 0..<channels {
                    let k = g[c] / (variance[c] + Double(eps)).squareRoot()
                    (factor[c], shift[c]) = (factor[c] * k, (shift[c] - mean[c]) * k + b[c])
                }
                continue
            }
            // The constant must be the second operand of Div and Sub (x / k, x − k); either of Mul and Add.
            guard n.inputs.count == 2, let k = perChannel(n.inputs[1]) ?? (["Mul", "Add"].contains(n.opType) ? perChannel(n.inputs[0]) : nil),
                  ctx.constant(n.inputs[0]) == nil || ["Mul", "Add"].contains(n.opType) else { return nil }
            for c in 0..<channels {
                switch n.opType {
                case "Mul": (factor[c], shift[c]) = (factor[c] * k[c], shift[c] * k[c])
                case "Div": (factor[c], shift[c]) = (factor[c] / k[c], shift[c] / k[c])
                case "Add": shift[c] += k[c]
                default: shift[c] -= k[c]
                }
            }
        }
        return (node, chain.isEmpty ? nil : (chain, factor, shift))
    }

    /// A quantized product's int8 weights as K×N (Gemm's N×K transposed into a new constant) and
    /// a zero weight zero point shaped like the scales.
    static func productWeights(_ name: String, _ w: Tensor, transposed: Bool, scales: Tensor, layer: String, _ ctx: RewriteContext,
                               _ initializers: inout [(String, Tensor)]) throws -> (weights: String, zeroPoint: String) {
        var weights = name
        if transposed {
            let (n, k) = (w.shape[0], w.shape[1]), v = w.int64s
            weights = ctx.graph.freshName("\(name)_kn")
            initializers.append((weights, try Tensor(.int8, shape: [k, n], int64s: (0..<(k * n)).map { v[($0 % n) * k + $0 / n] })))
        }
        let zero = ctx.graph.freshName("\(layer)_weight_zero_point")
        initializers.append((zero, try Tensor(.int8, shape: scales.shape, int64s: Array(repeating: 0, count: scales.count))))
        return (weights, zero)
    }

    static let matmul = RewriteRule("quantized matmul", roots: ["QuantizeLinear"]) { q, ctx in
        guard let (p, act) = layerBefore(q, ctx), let out = parameters(q, ctx, type: nil), let fusedActivation = activation(act, out, ctx) else { return nil }
        return try product(ending: p, activation: act, fold: fusedActivation, quantize: (q, out), ctx)
    }

    /// DQ(a), DQ(w) → MatMul (→ Add of a constant bias) read as floats, no QuantizeLinear after:
    /// FusedQLinearMatMul with a float output (what ONNX Runtime runs as MatMulIntegerToFloat;
    /// NNCF's transformers quantize their products so).
    static let floatProduct = RewriteRule("quantized matmul, float output", roots: ["MatMul", "Add"]) { node, ctx in
        guard !ctx.pass.standardOnly, node.domain.isEmpty else { return nil }
        // A product or its bias whose value goes on to a QuantizeLinear (directly or through an
        // activation or the bias) is the Q-rooted rule's.
        func quantizedLater(_ value: String) -> Bool {
            guard let c = ctx.uses.soleConsumer(value), c.domain.isEmpty else { return false }
            if c.opType == "QuantizeLinear" { return true }
            return ["Relu", "Clip", "Add"].contains(c.opType) && c.outputs.count == 1 && ctx.uses.soleConsumer(c.outputs[0])?.opType == "QuantizeLinear"
        }
        if node.opType == "MatMul", let c = ctx.uses.soleConsumer(node.outputs[0]), c.opType == "Add", biasOf(c, product: node, ctx) != nil { return nil }
        guard !quantizedLater(node.outputs[0]) else { return nil }
        return try product(ending: node, activation: nil, fold: ActivationFold.none, quantize: nil, ctx)
    }

    /// The constant bias of Add(product, bias) (either order): one value per output column.
    static func biasOf(_ add: Node, product: Node, _ ctx: RewriteContext) -> String? {
        guard add.opType == "Add", add.domain.isEmpty, add.inputs.count == 2, ctx.uses.soleConsumer(product.outputs[0]) === add else { return nil }
        for side in [0, 1] where add.inputs[side] == product.outputs[0] {
            let other = add.inputs[1 - side]
            guard let b = ctx.constant(other), b.dataType == .float, b.rank >= 1, b.shape.dropLast().allSatisfy({ $0 == 1 }) else { return nil }
            return other
        }
        return nil
    }

    /// DQ(a) → MatMul or Gemm(DQ(w), C?) (→ Add of a constant bias) → [activation] → [Q]: the
    /// quantized product, 8-bit out with `quantize`, float out without.
    static func product(ending p: Node, activation act: Node?, fold fusedActivation: ActivationFold, quantize: (node: Node, out: Quantization)?,
                        _ ctx: RewriteContext) throws -> Patch? {
        var mm = p, biasAdd: Node?, addedBias: String?
        if p.opType == "Add" {
            guard let m = p.inputs.compactMap({ ctx.producer($0) }).first(where: { $0.opType == "MatMul" && $0.domain.isEmpty }),
                  let b = biasOf(p, product: m, ctx) else { return nil }
            (mm, biasAdd, addedBias) = (m, p, b)
        }
        guard mm.opType == "MatMul" || mm.opType == "Gemm", mm.domain.isEmpty, mm.outputs.count == 1,
              mm.inputs.count >= 2, let a = dequantized(mm.inputs[0], ctx), let aRank = ctx.type(a.input).rank, aRank >= 2,
              let wdq = ctx.producer(mm.inputs[1]), wdq.opType == "DequantizeLinear", wdq.domain.isEmpty,
              wdq.inputs.count >= 2, let w = ctx.constant(wdq.inputs[0]), w.dataType == .int8, w.rank == 2,
              let ws = ctx.constant(wdq.inputs[1]), ws.dataType == .float else { return nil }
        let gemm = mm.opType == "Gemm", reader = AttributeReader(node: mm)
        let transposed = gemm && (try? reader.int("transB", 0)) != 0
        if gemm {
            guard aRank == 2, (try? reader.int("transA", 0)) == 0, (try? reader.float("alpha", 1)) == 1, (try? reader.float("beta", 1)) == 1 else { return nil }
            if mm.inputs.count > 2, !mm.inputs[2].isEmpty, addedBias != nil { return nil }
        } else if mm.inputs.count > 2 {
            return nil
        }
        let (_, n) = transposed ? (w.shape[1], w.shape[0]) : (w.shape[0], w.shape[1])
        // Scales along the columns (N): axis 0 of Gemm's N×K weights, axis 1 of K×N ones.
        let axis = (try? AttributeReader(node: wdq).int("axis", 1)) ?? 1
        guard ws.count == 1 || (ws.count == n && ws.rank == 1 && (axis == (transposed ? 0 : 1) || (!transposed && axis == -1))) else { return nil }
        if wdq.inputs.count > 2, !wdq.inputs[2].isEmpty {
            guard let z = ctx.constant(wdq.inputs[2]), z.dataType == .int8, z.int64s.allSatisfy({ $0 == 0 }) else { return nil }
        }
        var initializers: [(String, Tensor)] = []
        // A float bias stays float, added in real units as the model adds it (rounding it to int32
        // would move results by up to half an accumulator unit); a dequantized int32 one stays int32.
        let biasValue = addedBias ?? (gemm && mm.inputs.count > 2 && !mm.inputs[2].isEmpty ? mm.inputs[2] : nil)
        let bias: String
        if let biasValue, let b = ctx.constant(biasValue), b.dataType == .float {
            guard b.count == n else { return nil }
            bias = b.rank == 1 ? biasValue : ctx.graph.freshName("\(mm.name)_bias")
            if b.rank != 1 { initializers.append((bias, try b.reshaped([n]))) }
        } else {
            guard let b = try accumulatorBias(biasValue, channels: n, scales: ws.doubles.map { $0 * a.q.scaleValue }, ctx, &initializers, like: mm.name) else { return nil }
            bias = b
        }
        if case .fused = fusedActivation, ctx.pass.standardOnly { return nil }
        if !bias.isEmpty || quantize == nil, ctx.pass.standardOnly { return nil }
        let (weights, wz) = try productWeights(wdq.inputs[0], w, transposed: transposed, scales: ws, layer: mm.name, ctx, &initializers)
        var outputs = ["", ""]
        if let quantize { outputs = [quantize.out.scale, try zeroName(quantize.out, ctx, &initializers, like: quantize.node.outputs[0])] }
        let inputs = [a.input, a.q.scale, try zeroName(a.q, ctx, &initializers, like: a.input), weights, wdq.inputs[1], wz] + outputs
        let removed = [mm] + (biasAdd.map { [$0] } ?? []) + (act.map { [$0] } ?? []) + (quantize.map { [$0.node] } ?? [])
        let fusedFrom = removed.flatMap(\.fusedFrom), results = removed.last!.outputs
        if case .none = fusedActivation, bias.isEmpty, quantize != nil {
            let node = Node(name: mm.name, opType: "QLinearMatMul", inputs: inputs, outputs: results, fusedFrom: fusedFrom)
            return Patch(statistic: "DQ → MatMul → Q → QLinearMatMul", remove: removed, add: [node], initializers: initializers)
        }
        var attributes: [String: Attribute] = [:]
        if case .fused(let extra) = fusedActivation { attributes = extra }
        ctx.pass.useAnvilDomain()
        var fusedInputs = inputs + [bias]
        while fusedInputs.last == "" { fusedInputs.removeLast() }
        let node = Node(name: mm.name, opType: "FusedQLinearMatMul", domain: anvilDomain, inputs: fusedInputs, outputs: results,
                        attributes: attributes, fusedFrom: fusedFrom)
        return Patch(statistic: "DQ → \(mm.opType)\(biasAdd == nil ? "" : " + bias") → \(quantize == nil ? "float" : "Q") → FusedQLinearMatMul",
                     remove: removed, add: [node], initializers: initializers)
    }

    static let residual = RewriteRule("quantized residual", roots: ["QuantizeLinear"]) { q, ctx in
        guard !ctx.pass.standardOnly, let (add, act) = layerBefore(q, ctx), add.opType == "Add", add.domain.isEmpty, add.inputs.count == 2,
              add.inputs[0] != add.inputs[1], let out = parameters(q, ctx, type: nil), let fusedActivation = activation(act, out, ctx) else { return nil }
        for side in [0, 1] {
            guard let mine = dequantized(add.inputs[side], ctx), let other = dequantized(add.inputs[1 - side], ctx),
                  ctx.uses.soleConsumer(mine.node.outputs[0]) === add, let conv = ctx.producer(mine.input),
                  ctx.uses.soleConsumer(conv.outputs[0]) === mine.node,
                  ctx.type(add.outputs[0]).dims == ctx.type(other.input).dims, ctx.type(other.input).dims != nil else { continue }
            // A convolution that has neither a residual nor an activation yet (the sum comes before the activation).
            let plain = conv.domain.isEmpty && conv.opType == "QLinearConv"
            let fusedPlain = conv.domain == anvilDomain && conv.opType == "FusedQLinearConv" && conv.inputs.count <= 9 && conv.attributes["activation"] == nil
            guard plain || fusedPlain, conv.inputs.count >= 8 else { continue }
            var initializers: [(String, Tensor)] = []
            var inputs = Array(conv.inputs.prefix(6)) + [out.scale, try zeroName(out, ctx, &initializers, like: q.outputs[0])]
            inputs.append(conv.inputs.count > 8 ? conv.inputs[8] : "")
            inputs += [other.input, other.q.scale, try zeroName(other.q, ctx, &initializers, like: other.input)]
            // The convolution's own output quantization stays, as the model has it: rounded before the sum.
            inputs += [conv.inputs[6], conv.inputs[7]]
            var attributes = conv.attributes
            if case .fused(let extra) = fusedActivation { attributes.merge(extra) { $1 } }
            ctx.pass.useAnvilDomain()
            let removed = [conv, mine.node, add] + (act.map { [$0] } ?? []) + [q]
            let node = Node(name: conv.name, opType: "FusedQLinearConv", domain: anvilDomain, inputs: inputs, outputs: q.outputs,
                            attributes: attributes, fusedFrom: removed.flatMap(\.fusedFrom))
            return Patch(statistic: "QLinearConv + DQ → Add → Q → FusedQLinearConv", remove: removed, add: [node], initializers: initializers)
        }
        return nil
    }

    /// Ops that move or select values without arithmetic, with the input that carries the data
    /// (nil: every input, Concat's); an 8-bit kernel takes each.
    static let movementOps: [String: Int?] = ["MaxPool": 0, "Concat": nil, "Reshape": 0, "Flatten": 0, "Squeeze": 0, "Unsqueeze": 0]

    /// DQ(x…) → MaxPool, Concat, Reshape … → Q, every x with the output's scale and zero point:
    /// the op on the 8-bit tensors (exact: it only moves or selects values).
    static let movement = RewriteRule("quantized data movement", roots: ["QuantizeLinear"]) { q, ctx in
        guard ctx.pass.opset() >= 13, let (op, act) = layerBefore(q, ctx), act == nil, op.domain.isEmpty, let entry = movementOps[op.opType],
              op.outputs.count == 1, let out = parameters(q, ctx, type: nil) else { return nil }
        let data = entry.map { [$0] } ?? Array(op.inputs.indices)
        var inputs = op.inputs
        for i in data {
            guard i < op.inputs.count, let x = dequantized(op.inputs[i], ctx), out.same(as: x.q) else { return nil }
            inputs[i] = x.input
        }
        let node = Node(name: op.name, opType: op.opType, inputs: inputs, outputs: q.outputs, attributes: op.attributes, fusedFrom: op.fusedFrom + q.fusedFrom)
        return Patch(statistic: "DQ → \(op.opType) → Q → \(op.opType)", remove: [op, q], add: [node])
    }

    /// Split, Concat or MaxPool of dequantized tensors with one scale and zero point, read as
    /// floats (no QuantizeLinear right after: NNCF leaves YOLO's split and concatenated
    /// features and ResNet's pooled stem so): the op on the 8-bit tensors, then one
    /// DequantizeLinear per output (exact: these ops only move or select values, and
    /// dequantizing is increasing), so the layers reading them see DQ(x) and fold.
    static let sinkDequantize = RewriteRule("dequantize after data movement", roots: ["Split", "Concat", "MaxPool"]) { op, ctx in
        guard op.domain.isEmpty, ctx.pass.opset() >= 13, op.outputs.allSatisfy({ !$0.isEmpty }), !(op.opType == "MaxPool" && op.outputs.count != 1) else { return nil }
        // A single output quantized right away is the `movement` rule's.
        if op.outputs.count == 1, ctx.uses.soleConsumer(op.outputs[0])?.opType == "QuantizeLinear" { return nil }
        let data = op.opType == "Concat" ? Array(op.inputs.indices) : [0]
        var inputs = op.inputs, first: (node: Node, input: String, q: Quantization)?
        for i in data {
            guard i < op.inputs.count, let x = dequantized(op.inputs[i], ctx), first.map({ x.q.same(as: $0.q) }) ?? true else { return nil }
            first = first ?? x
            inputs[i] = x.input
        }
        guard let dq = first?.node else { return nil }
        let eight = op.outputs.map { ctx.graph.freshName("\($0)_quantized") }
        var nodes = [Node(name: op.name, opType: op.opType, inputs: inputs, outputs: eight, attributes: op.attributes, fusedFrom: op.fusedFrom)]
        for (q, out) in zip(eight, op.outputs) {
            nodes.append(Node(name: ctx.graph.freshNodeName("\(out)_dequantize"), opType: "DequantizeLinear", inputs: [q] + dq.inputs.dropFirst(),
                              outputs: [out], attributes: dq.attributes))
        }
        return Patch(statistic: "DQ → \(op.opType) → \(op.opType) → DQ", remove: [op], add: nodes)
    }
}
