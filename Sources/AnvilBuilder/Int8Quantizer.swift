import AnvilCore
import AnvilIR
import AnvilKernels

/// Implicit INT8 (`--int8`), as TensorRT's calibrated builds: the optimized FP32 graph's
/// convolutions and matrix products with constant weights become quantized layers
/// (`ai.anvil.FusedQLinearConv` / `FusedQLinearMatMul`) with
/// - per-output-channel symmetric int8 weights (scale max |w| / 127) and an int32 bias;
/// - per-tensor activations from the calibration ranges: uint8 with zero point 0 for a
///   tensor that never goes negative, else symmetric int8 (no zero points anywhere, the
///   fastest kernels);
/// - 8-bit outputs where another quantized layer (or a max pooling leading to one) reads
///   them, so INT8 layers hand 8-bit tensors to each other (residual sums included) and the
///   requantization happens in the producing kernel; float outputs where only float layers
///   read them; --layerOutputTypes overrides either way.
/// A QuantizeLinear goes where a float tensor enters the quantized layers, a
/// DequantizeLinear where an 8-bit one leaves them. Layers stay FP32 when they are the
/// first or last weighted layer (unless pinned INT8), pinned FP32, or not quantizable
/// (a fused HardSigmoid, a tensor calibration did not see).
struct Int8Quantizer {
    let calibration: Int8Calibration
    let policy: PrecisionPolicy

    /// The 8-bit form of a tensor: its name, scale and type.
    struct Quantized {
        var name: String
        var scale: Float
        var type: DataType
    }

    /// A weighted node and what it reads: the input, the weights (constant float), the bias, the residual.
    struct Weighted {
        let node: Node
        let isConv: Bool
        /// The weights as [Cout, …] for a convolution, [K, N] for a product.
        let weights: Tensor
        let bias: Tensor?
        let residual: String?
    }

    /// Rewrites `model` in place; returns the names of the layers made INT8.
    func apply(_ model: Model) throws -> [String] {
        let graph = model.graph
        // Their activated values (before the residual) were never calibrated: float outputs.
        let separated = Self.separateResidualsAfterActivations(graph)
        let weighted = graph.nodes.compactMap { weightedNode($0, graph) }
        // The first and last weighted layers of the graph, transposed convolutions (which stay
        // FP32) included: PP-OCR's detector ends in ConvTranspose, so the 3×3 convolution before
        // it (a fifth of its work) is not an end.
        let weightedNames = Set(weighted.map(\.node.name))
        let endCandidates = graph.nodes.filter { weightedNames.contains($0.name) || ($0.domain.isEmpty && $0.opType == "ConvTranspose") }.map(\.name)
        let ends: Set<String> = policy.keepEnds ? Set([endCandidates.first, endCandidates.last].compactMap { $0 }) : []
        var chosen: [String: Weighted] = [:]
        // Ranges of none of the graph's tensors: a cache made for another model.
        if !weighted.isEmpty, !graph.nodes.contains(where: { $0.outputs.contains { calibration.ranges[$0] != nil } }) {
            throw AnvilError.invalidArgument("INT8 calibration has no range for any tensor of this model (a calibration cache made for another model or build?)")
        }
        /// What a table asks of a node: under its name or a fused node's, else under "*" (`own` false).
        func asked(_ table: [String: Precision], _ node: Node) -> (precision: Precision, own: Bool)? {
            PrecisionPolicy.asked(table, names: [node.name] + node.fusedFrom).map { ($0.0, $0.name != "*") }
        }
        for w in weighted {
            let pinned = asked(policy.layerPrecisions, w.node)
            guard pinned?.precision == .int8 || (pinned == nil && policy.int8 && !ends.contains(w.node.name)) else { continue }
            if let reason = unquantizable(w, uncalibratedOutput: separated.contains(w.node.outputs[0])) {
                if pinned?.own == true { throw AnvilError.invalidArgument("--layerPrecisions: layer '\(w.node.name)' cannot run in INT8: \(reason)") }
                continue
            }
            if let out = asked(policy.layerOutputTypes, w.node), out.own, out.precision == .int8, !w.isConv, w.residual != nil {
                throw AnvilError.invalidArgument("--layerOutputTypes: layer '\(w.node.name)' cannot write INT8: an INT8 matrix product sums its residual in FP32")
            }
            chosen[w.node.name] = w
        }
        guard !chosen.isEmpty else { return [] }
        var consumers: [String: [Node]] = [:]
        for node in graph.nodes { for i in node.inputs where !i.isEmpty { consumers[i, default: []].append(node) } }
        let graphOutputs = Set(graph.outputs.map(\.name))
        // Whether a tensor is read in 8 bits: as a quantized layer's input, as the residual of
        // one writing 8 bits, or through a max pooling whose output is.
        var eightBit: [String: Bool] = [:]
        func readInEightBits(_ t: String) -> Bool {
            if let known = eightBit[t] { return known }
            eightBit[t] = false
            let result = (consumers[t] ?? []).contains { readsEightBits($0, t) }
            eightBit[t] = result
            return result
        }
        func readsEightBits(_ c: Node, _ t: String) -> Bool {
            if let w = chosen[c.name] { return c.inputs[0] == t || (w.residual == t && writesEightBits(w)) }
            return isMaxPool(c) && readInEightBits(c.outputs[0])
        }
        // A matrix product with a residual sums it in floats (its result then stays float);
        // --layerOutputTypes decides where it names the layer (or "*").
        func writesEightBits(_ w: Weighted) -> Bool {
            guard w.isConv || w.residual == nil else { return false }
            switch asked(policy.layerOutputTypes, w.node)?.precision {
            case .fp32?: return false
            case .int8?: return true
            default: return readInEightBits(w.node.outputs[0])
            }
        }
        var quantized: [String: Quantized] = [:]
        var nodes: [Node] = []
        func parameters(_ t: String) throws -> (Float, DataType) {
            guard let r = calibration.ranges[t] else {
                throw AnvilError.invalidArgument("INT8 calibration has no range for '\(t)' (a calibration cache made for another model or build?)")
            }
            let signed = r.low < 0, top = max(-r.low, r.high)
            let scale = top > 0 ? Float(top / (signed ? 127 : 255)) : 1
            return (scale, signed ? .int8 : .uint8)
        }
        /// The 8-bit form of `t`, quantizing it (a QuantizeLinear now) the first time.
        func eightBits(_ t: String) throws -> Quantized {
            if let q = quantized[t] { return q }
            let (scale, type) = try parameters(t)
            let q = Quantized(name: graph.freshName("\(t)_int8"), scale: scale, type: type)
            let (s, z) = try scaleAndZero(q, graph)
            nodes.append(Node(name: graph.freshNodeName("\(t)_quantize"), opType: "QuantizeLinear", inputs: [t, s, z], outputs: [q.name]))
            quantized[t] = q
            return q
        }
        /// The output of a layer writing 8 bits: a DequantizeLinear gives float readers the float tensor.
        func producedInEightBits(_ t: String) throws -> Quantized {
            let (scale, type) = try parameters(t)
            let q = Quantized(name: graph.freshName("\(t)_int8"), scale: scale, type: type)
            quantized[t] = q
            return q
        }
        func dequantizeIfRead(_ t: String, _ q: Quantized) throws {
            let floatReaders = graphOutputs.contains(t) || (consumers[t] ?? []).contains { c in
                !readsEightBits(c, t) || c.inputs.filter { $0 == t }.count > 1
            }
            guard floatReaders else { return }
            let (s, z) = try scaleAndZero(q, graph)
            nodes.append(Node(name: graph.freshNodeName("\(t)_dequantize"), opType: "DequantizeLinear", inputs: [q.name, s, z], outputs: [t]))
        }
        for node in graph.nodes {
            if let w = chosen[node.name] {
                let out = node.outputs[0], eight = writesEightBits(w)
                let x = try eightBits(node.inputs[0])
                let residual: String? = try w.residual.map { r in eight ? try eightBits(r).name : r }
                let y = eight ? try producedInEightBits(out) : nil
                nodes.append(try quantizedLayer(w, x: x, residual: residual.map { r in (r, eight ? quantized[w.residual!] : nil) }, output: y ?? nil, name: out, graph))
                if let y { try dequantizeIfRead(out, y) }
            } else if isMaxPool(node), let x = quantized[node.inputs[0]], readInEightBits(node.outputs[0]) {
                // The maximum of 8-bit values with the input's scale: exact.
                let y = Quantized(name: graph.freshName("\(node.outputs[0])_int8"), scale: x.scale, type: x.type)
                quantized[node.outputs[0]] = y
                nodes.append(Node(name: node.name, opType: "MaxPool", inputs: [x.name], outputs: [y.name], attributes: node.attributes, fusedFrom: node.fusedFrom))
                try dequantizeIfRead(node.outputs[0], y)
            } else {
                nodes.append(node)
            }
        }
        graph.nodes = nodes
        // The float weights the quantized layers replaced (and nothing else reads) go.
        let read = Set(nodes.flatMap(\.inputs)).union(graph.outputs.map(\.name)).union(graph.inputs.map(\.name))
            .union(nodes.flatMap { $0.subgraphs.flatMap { UseIndex.outerReferences($0) } })
        for w in chosen.values {
            for name in w.node.inputs.dropFirst().prefix(2) where !name.isEmpty && !read.contains(name) { graph.removeInitializer(name) }
        }
        if model.opsetVersion(domain: anvilDomain) == nil { model.opsets.append(OpsetImport(domain: anvilDomain, version: 1)) }
        return chosen.keys.sorted()
    }

    func isMaxPool(_ node: Node) -> Bool {
        node.domain.isEmpty && node.opType == "MaxPool" && node.outputs.count == 1 && node.inputs.count == 1
    }

    /// A convolution or a matrix product with constant float weights.
    func weightedNode(_ node: Node, _ graph: Graph) -> Weighted? {
        let fused = node.domain == anvilDomain
        guard node.domain.isEmpty || fused, node.inputs.count >= 2, let w = graph.initializers[node.inputs[1]], w.dataType == .float else { return nil }
        func input(_ i: Int) -> String? { i < node.inputs.count && !node.inputs[i].isEmpty ? node.inputs[i] : nil }
        let bias = input(2).flatMap { graph.initializers[$0] }
        if input(2) != nil && bias == nil { return nil }
        switch (node.opType, fused) {
        case ("Conv", false), ("FusedConv", true):
            return Weighted(node: node, isConv: true, weights: w, bias: bias, residual: fused ? input(3) : nil)
        case ("MatMul", false), ("FusedMatMul", true), ("Gemm", false), ("FusedGemm", true):
            guard w.rank == 2 else { return nil }
            let reader = AttributeReader(node: node)
            if node.opType.hasSuffix("Gemm") {
                guard (try? reader.int("transA", 0)) == 0, (try? reader.float("alpha", 1)) == 1, (try? reader.float("beta", 1)) == 1 else { return nil }
                // Gemm's N×K weights (transB) as K×N.
                if (try? reader.int("transB", 0)) != 0, let t = try? Self.transposed(w) {
                    return Weighted(node: node, isConv: false, weights: t, bias: bias, residual: fused ? input(3) : nil)
                }
            }
            return Weighted(node: node, isConv: false, weights: w, bias: bias, residual: fused ? input(3) : nil)
        default:
            return nil
        }
    }

    /// A convolution adding its residual after the activation (`residual_after_activation`)
    /// becomes the convolution and an Add again: the INT8 layers requantize before a residual
    /// sum, not after the activation, so the Add stays a float layer as it was in the model.
    static func separateResidualsAfterActivations(_ graph: Graph) -> Set<String> {
        var nodes: [Node] = [], separated: Set<String> = []
        for node in graph.nodes {
            guard node.domain == anvilDomain, node.opType == "FusedConv", node.inputs.count > 3, !node.inputs[3].isEmpty,
                  case .int(1)? = node.attributes["residual_after_activation"] else { nodes.append(node); continue }
            let activated = graph.freshName("\(node.outputs[0])_activated")
            separated.insert(activated)
            var attributes = node.attributes
            attributes["residual_after_activation"] = nil
            var inputs = Array(node.inputs.prefix(3))
            while inputs.last == "" { inputs.removeLast() }
            nodes.append(Node(name: node.name, opType: node.opType, domain: node.domain, inputs: inputs, outputs: [activated],
                              attributes: attributes, fusedFrom: Array(node.fusedFrom.dropLast())))
            nodes.append(Node(name: graph.freshNodeName("\(node.name)_residual"), opType: "Add", inputs: [activated, node.inputs[3]], outputs: node.outputs,
                              fusedFrom: Array(node.fusedFrom.suffix(1))))
        }
        graph.nodes = nodes
        return separated
    }

    static func transposed(_ w: Tensor) throws -> Tensor {
        let (rows, cols) = (w.shape[0], w.shape[1]), v = w.floats
        return try Tensor(floats: (0..<(rows * cols)).map { v[($0 % rows) * cols + $0 / rows] }, shape: [cols, rows])
    }

    /// Why a weighted layer cannot be made INT8 (nil: it can).
    func unquantizable(_ w: Weighted, uncalibratedOutput: Bool = false) -> String? {
        let activation = try? AttributeReader(node: w.node).string("activation")
        if let a = activation ?? nil, ["HardSigmoid"].contains(a) { return "its fused \(a) has no INT8 form" }
        if w.isConv, !(3...5).contains(w.weights.rank) { return "a \(w.weights.rank)-D convolution" }
        let channels = w.isConv ? w.weights.shape[0] : w.weights.shape[1]
        if let b = w.bias, b.count != channels { return "a bias of \(b.count) values for \(channels) channels" }
        for t in [w.node.inputs[0]] + (uncalibratedOutput ? [] : [w.node.outputs[0]]) + (w.residual.map { [$0] } ?? []) where calibration.ranges[t] == nil {
            return "calibration saw no values of '\(t)'"
        }
        return nil
    }

    /// Initializers for a quantization's scale and (zero) zero point.
    func scaleAndZero(_ q: Quantized, _ graph: Graph) throws -> (String, String) {
        let s = graph.freshName("\(q.name)_scale"), z = graph.freshName("\(q.name)_zero_point")
        graph.setInitializer(s, try Tensor(floats: [q.scale], shape: []))
        graph.setInitializer(z, try Tensor(q.type, shape: [], int64s: [0]))
        return (s, z)
    }

    /// The quantized layer: int8 weights per output channel, the int32 bias in units of
    /// x_scale · w_scale, the output 8-bit (`output`) or float, the residual likewise.
    func quantizedLayer(_ w: Weighted, x: Quantized, residual: (name: String, quantized: Quantized?)?, output: Quantized?, name: String,
                        _ graph: Graph) throws -> Node {
        let node = w.node, values = w.weights.floats
        let channels = w.isConv ? w.weights.shape[0] : w.weights.shape[1], count = values.count
        // Channel of element i: the outer axis of a convolution's weights, the inner one of a product's.
        let channel: (Int) -> Int = w.isConv ? { $0 / (count / channels) } : { $0 % channels }
        var top = [Float](repeating: 0, count: channels)
        for i in 0..<count { top[channel(i)] = max(top[channel(i)], abs(values[i])) }
        let scales = top.map { $0 > 0 ? $0 / 127 : 1 }
        let q = (0..<count).map { i in Int64(min(max((values[i] / scales[channel(i)]).rounded(.toNearestOrEven), -127), 127)) }
        let base = node.name
        let wq = graph.freshName("\(base)_weight_int8"), ws = graph.freshName("\(base)_weight_scale"), wz = graph.freshName("\(base)_weight_zero_point")
        graph.setInitializer(wq, try Tensor(.int8, shape: w.weights.shape, int64s: q))
        graph.setInitializer(ws, try Tensor(floats: scales, shape: [channels]))
        graph.setInitializer(wz, try Tensor(.int8, shape: [channels], int64s: Array(repeating: 0, count: channels)))
        let (xs, xz) = try scaleAndZero(x, graph)
        var inputs = [x.name, xs, xz, wq, ws, wz]
        if let output {
            let (ys, yz) = try scaleAndZero(output, graph)
            inputs += [ys, yz]
        } else {
            inputs += ["", ""]
        }
        if let b = w.bias {
            let bq = graph.freshName("\(base)_bias_int32")
            let bv = b.floats
            graph.setInitializer(bq, try Tensor(.int32, shape: [channels], int64s: (0..<channels).map { c in
                Int64(max(min((Double(bv[c]) / (Double(x.scale) * Double(scales[c]))).rounded(), 2147483647), -2147483647))
            }))
            inputs.append(bq)
        } else {
            inputs.append("")
        }
        var attributes = node.attributes
        if let residual {
            inputs.append(residual.name)
            if let r = residual.quantized {
                let (rs, rz) = try scaleAndZero(r, graph)
                inputs += [rs, rz]
            }
        }
        // A ReLU or Clip the 8-bit output's own range computes needs no post-op.
        if let output, output.type == .uint8, case .string(let a)? = attributes["activation"] {
            let high = Double(output.scale) * 255
            let lo: Double = a == "Relu" ? 0 : attributes["activation_alpha"].flatMap { if case .float(let v) = $0 { Double(v) } else { nil } } ?? 0
            let hi: Double = a == "Relu" ? .infinity : attributes["activation_beta"].flatMap { if case .float(let v) = $0 { Double(v) } else { nil } } ?? .infinity
            if lo <= 0, hi >= high { for k in ["activation", "activation_alpha", "activation_beta"] { attributes[k] = nil } }
        }
        // A plain Conv / MatMul / Gemm carries its own attributes (Gemm's transB is now in the weights).
        for k in ["transA", "transB", "alpha", "beta"] { attributes[k] = nil }
        while inputs.last == "" { inputs.removeLast() }
        return Node(name: node.name, opType: w.isConv ? "FusedQLinearConv" : "FusedQLinearMatMul", domain: anvilDomain, inputs: inputs,
                    outputs: [output?.name ?? name], attributes: attributes, fusedFrom: node.fusedFrom)
    }
}
