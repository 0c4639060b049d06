import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilOps

/// ONNX Runtime's QOperator-format ops (com.microsoft) onto the layers `FoldQuantizedLayers`
/// makes, which run on oneDNN's INT8 kernels.
extension FoldQuantizedLayers {
    static var microsoftRules: [RewriteRule] { [qLinearAdd, qGemm, qLinearGlobalAveragePool] }

    /// The constant scalar value of an optional input (absent: 0).
    static func scalar(_ node: Node, _ i: Int, _ ctx: RewriteContext) -> Double? {
        guard i < node.inputs.count, !node.inputs[i].isEmpty else { return 0 }
        guard let t = ctx.constant(node.inputs[i]), t.count == 1 else { return nil }
        return t.doubles[0]
    }

    /// QLinearAdd(A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp) where A (or B) is a
    /// QLinearConv's output read only here, with the convolution's own scale and zero point:
    /// the convolution with B as its residual, its own output quantization kept inside.
    static let qLinearAdd = RewriteRule("com.microsoft.QLinearAdd into the convolution", roots: ["QLinearAdd"]) { add, ctx in
        guard add.domain == microsoftDomain, !ctx.pass.standardOnly, add.inputs.count >= 7, add.outputs.count == 1,
              ctx.type(add.inputs[0]).dims == ctx.type(add.inputs[3]).dims, ctx.type(add.inputs[0]).dims != nil else { return nil }
        for side in [0, 3] {
            let other = side == 0 ? 3 : 0
            guard let conv = ctx.producer(add.inputs[side]), conv.domain.isEmpty, conv.opType == "QLinearConv", conv.inputs.count >= 8,
                  ctx.uses.soleConsumer(conv.outputs[0]) === add,
                  let s = scalar(add, side + 1, ctx), let z = scalar(add, side + 2, ctx), let cs = scalar(conv, 6, ctx), let cz = scalar(conv, 7, ctx),
                  s == cs, z == cz, add.inputs.count > other + 1, ctx.constant(add.inputs[other + 1]) != nil else { continue }
            var initializers: [(String, Tensor)] = []
            func zero(_ i: Int, like type: DataType?) throws -> String {
                if i < add.inputs.count, !add.inputs[i].isEmpty { return add.inputs[i] }
                let name = ctx.graph.freshName("\(add.name)_zero_point")
                initializers.append((name, try Tensor(type ?? .uint8, shape: [], int64s: [0])))
                return name
            }
            let inputs = Array(conv.inputs.prefix(6)) + [add.inputs[6], try zero(7, like: ctx.type(add.inputs[0]).elementType)]
                + [conv.inputs.count > 8 ? conv.inputs[8] : ""]
                + [add.inputs[other], add.inputs[other + 1], try zero(other + 2, like: ctx.type(add.inputs[other]).elementType)]
                + [conv.inputs[6], conv.inputs[7]]
            ctx.pass.useAnvilDomain()
            let node = Node(name: conv.name, opType: "FusedQLinearConv", domain: anvilDomain, inputs: inputs, outputs: add.outputs,
                            attributes: conv.attributes, fusedFrom: conv.fusedFrom + add.fusedFrom)
            return Patch(statistic: "QLinearConv + com.microsoft.QLinearAdd → FusedQLinearConv", remove: [conv, add], add: [node], initializers: initializers)
        }
        return nil
    }

    /// QGemm(A, a_scale, a_zp, B, b_scale, b_zp, C?, y_scale?, y_zp?) with constant int8 B
    /// (zero points 0), transA 0, alpha 1: FusedQLinearMatMul with B as K×N.
    static let qGemm = RewriteRule("com.microsoft.QGemm as a quantized matmul", roots: ["QGemm"]) { gemm, ctx in
        guard gemm.domain == microsoftDomain, !ctx.pass.standardOnly, gemm.inputs.count >= 6, gemm.outputs.count == 1,
              let w = ctx.constant(gemm.inputs[3]), w.dataType == .int8, w.rank == 2, let ws = ctx.constant(gemm.inputs[4]), ws.dataType == .float,
              ctx.type(gemm.inputs[0]).rank == 2 else { return nil }
        let reader = AttributeReader(node: gemm)
        guard (try? reader.int("transA", 0)) == 0, (try? reader.float("alpha", 1)) == 1 else { return nil }
        let transposed = (try? reader.int("transB", 0)) != 0
        let n = transposed ? w.shape[0] : w.shape[1]
        guard ws.count == 1 || ws.count == n else { return nil }
        if gemm.inputs.count > 5, !gemm.inputs[5].isEmpty {
            guard let z = ctx.constant(gemm.inputs[5]), z.int64s.allSatisfy({ $0 == 0 }) else { return nil }
        }
        if gemm.inputs.count > 6, !gemm.inputs[6].isEmpty {
            guard let c = ctx.constant(gemm.inputs[6]), c.dataType == .int32, c.count == n else { return nil }
        }
        var initializers: [(String, Tensor)] = []
        let (weights, wz) = try productWeights(gemm.inputs[3], w, transposed: transposed, scales: ws, layer: gemm.name, ctx, &initializers)
        func input(_ i: Int) -> String { i < gemm.inputs.count ? gemm.inputs[i] : "" }
        var inputs = [input(0), input(1), input(2), weights, input(4), wz, input(7), input(8), input(6)]
        while inputs.last == "" { inputs.removeLast() }
        ctx.pass.useAnvilDomain()
        let node = Node(name: gemm.name, opType: "FusedQLinearMatMul", domain: anvilDomain, inputs: inputs, outputs: gemm.outputs, fusedFrom: gemm.fusedFrom)
        return Patch(statistic: "com.microsoft.QGemm → FusedQLinearMatMul", remove: [gemm], add: [node], initializers: initializers)
    }

    /// QLinearGlobalAveragePool (channels first) as DequantizeLinear → GlobalAveragePool →
    /// QuantizeLinear, standard ops with fast kernels.
    static let qLinearGlobalAveragePool = RewriteRule("com.microsoft.QLinearGlobalAveragePool as standard ops", roots: ["QLinearGlobalAveragePool"]) { pool, ctx in
        guard pool.domain == microsoftDomain, pool.inputs.count >= 4, pool.outputs.count == 1, (try? AttributeReader(node: pool).int("channels_last", 0)) == 0,
              ctx.pass.opset() >= 10 else { return nil }
        func input(_ i: Int) -> String { i < pool.inputs.count ? pool.inputs[i] : "" }
        let real = ctx.graph.freshName("\(pool.name)_real"), mean = ctx.graph.freshName("\(pool.name)_mean")
        let nodes = [
            Node(name: "\(pool.name)_dequantize", opType: "DequantizeLinear", inputs: [input(0), input(1), input(2)].reversedTrimmed(), outputs: [real]),
            Node(name: pool.name, opType: "GlobalAveragePool", inputs: [real], outputs: [mean], fusedFrom: pool.fusedFrom),
            Node(name: "\(pool.name)_quantize", opType: "QuantizeLinear", inputs: [mean, input(3), input(4)].reversedTrimmed(), outputs: pool.outputs),
        ]
        return Patch(statistic: "com.microsoft.QLinearGlobalAveragePool → DequantizeLinear, GlobalAveragePool, QuantizeLinear", remove: [pool], add: nodes)
    }
}

extension Array where Element == String {
    /// Without trailing empty names (absent optional inputs).
    func reversedTrimmed() -> [String] {
        var copy = self
        while copy.last == "" { copy.removeLast() }
        return copy
    }
}
