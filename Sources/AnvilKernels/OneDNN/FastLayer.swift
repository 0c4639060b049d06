import AnvilCore

/// A layer run by a oneDNN kernel on plain tensors, prepared for one set of input
/// shapes: the layer interpreter's fast path, for graphs the planner does not take
/// (control flow, strings) and for the first run of new dynamic shapes. Planned
/// runs (ExecutionPlan) use the layouts and tactics chosen at build time instead.
public final class FastLayer {
    enum Kernel {
        case convolution(DNNLConvolution)
        case matmul(DNNLMatMul, outputShape: [Int])
    }
    let kernel: Kernel
    /// The input shapes it was prepared for.
    public let inputShapes: [[Int]?]
    /// The oneDNN implementation, for profiles and inspect.
    public var implementation: String {
        switch kernel {
        case .convolution(let c): c.implementation
        case .matmul(let m, _): m.implementation
        }
    }

    init(_ kernel: Kernel, inputShapes: [[Int]?]) {
        self.kernel = kernel
        self.inputShapes = inputShapes
    }

    /// Whether a layer can run on oneDNN at all (constant float weights, supported op).
    public static func supports(opType: String, domain: String, weights: Tensor?, attributes: [String: Attribute]) -> Bool {
        guard let w = weights, w.dataType == .float else { return false }
        switch (domain, opType) {
        case ("", "Conv"), ("ai.anvil", "FusedConv"): return (3...5).contains(w.rank)
        case ("", "MatMul"), ("ai.anvil", "FusedMatMul"): return w.rank == 2
        case ("", "Gemm"), ("ai.anvil", "FusedGemm"):
            if case .int(let t)? = attributes["transA"], t != 0 { return false }
            return w.rank == 2
        default: return false
        }
    }

    /// Prepares the kernel for the inputs in `ctx`; nil when these inputs don't fit oneDNN.
    public static func make(_ ctx: EvalContext, engine: DNNLEngine) throws -> FastLayer? {
        guard let x = ctx.optionalInput(0), x.dataType == .float, let w = ctx.optionalInput(1), w.dataType == .float else { return nil }
        let activation = try fusedActivation(ctx)
        let hasSum = ctx.inputs.count > 3 && ctx.inputs[3] != nil
        let shapes = ctx.inputs.map { $0?.shape }
        switch ctx.opType {
        case "Conv", "FusedConv":
            guard x.rank == w.rank else { return nil }
            let attrs = try WindowAttributes(ctx)
            let g = try attrs.geometry(ctx, input: Array(x.shape[2...]), kernel: attrs.kernelShape ?? Array(w.shape[2...]))
            guard g.output.allSatisfy({ $0 > 0 }), x.shape[1] == w.shape[1] * attrs.group else { return nil }
            let conv = try DNNLConvolution(engine: engine, inputShape: x.shape, weights: w, bias: ctx.optionalInput(2), geometry: g,
                                           group: attrs.group, activation: activation, residual: hasSum)
            return FastLayer(.convolution(conv), inputShapes: shapes)
        case "MatMul", "FusedMatMul":
            guard x.rank >= 2, x.shape.last == w.shape[0] else { return nil }
            if let bias = ctx.optionalInput(2), bias.rank != 1 || bias.count != w.shape[1] || bias.dataType != .float { return nil }
            let m = x.count / w.shape[0]
            let kernel = try DNNLMatMul(engine: engine, m: m, weights: w, bias: ctx.optionalInput(2), activation: activation, residual: hasSum)
            return FastLayer(.matmul(kernel, outputShape: Array(x.shape.dropLast()) + [w.shape[1]]), inputShapes: shapes)
        case "Gemm", "FusedGemm":
            let a = ctx.attributes
            guard x.rank == 2, try a.int("transA", 0) == 0 else { return nil }
            let transB = try a.int("transB", 0) != 0
            let k = transB ? w.shape[1] : w.shape[0], n = transB ? w.shape[0] : w.shape[1]
            guard x.shape[1] == k else { return nil }
            var bias: Tensor?
            if let c = ctx.optionalInput(2) {
                guard try a.float("beta", 1) == 1, c.dataType == .float, c.count == n, c.shape.dropLast().allSatisfy({ $0 == 1 }) else { return nil }
                bias = try c.reshaped([n])
            }
            let kernel = try DNNLMatMul(engine: engine, m: x.shape[0], weights: w, transposedWeights: transB, alpha: try a.float("alpha", 1),
                                        bias: bias, activation: activation, residual: hasSum)
            return FastLayer(.matmul(kernel, outputShape: [x.shape[0], n]), inputShapes: shapes)
        default:
            return nil
        }
    }

    /// Runs on the context's inputs.
    public func run(_ ctx: EvalContext, stream: DNNLStream) throws -> Tensor {
        let sum = ctx.inputs.count > 3 ? ctx.inputs[3] : nil
        switch kernel {
        case .convolution(let c): return try c.run(stream: stream, ctx.input(0), residual: sum)
        case .matmul(let m, let shape): return try m.run(stream: stream, ctx.input(0), residual: sum).reshaped(shape)
        }
    }
}

