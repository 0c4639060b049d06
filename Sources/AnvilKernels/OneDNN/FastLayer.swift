import AnvilCore
import Dispatch
import Foundation

/// A layer run by a oneDNN kernel, prepared for one set of input shapes. The
/// runtime creates it the first time a context meets those shapes and reuses it.
public final class FastLayer {
    enum Kernel {
        case convolution(DNNLConvolution)
        /// A convolution in oneDNN's blocked layout, with reorders at its boundary.
        case blocked(BlockedConvolution)
        case matmul(DNNLMatMul, outputShape: [Int])
    }
    let kernel: Kernel
    /// The input shapes it was prepared for.
    public let inputShapes: [[Int]?]
    /// The oneDNN implementation, for profiles and inspect.
    public var implementation: String {
        switch kernel {
        case .convolution(let c): c.implementation
        case .blocked(let b): b.convolution.implementation + " (blocked)"
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
    /// Where several implementations apply, `tactics` decides once per layer and shape
    /// for every context of an engine, so all contexts compute identical results.
    public static func make(_ ctx: EvalContext, engine: DNNLEngine, tactics: TacticChoices) throws -> FastLayer? {
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
            let plain = try DNNLConvolution(engine: engine, inputShape: x.shape, weights: w, bias: ctx.optionalInput(2), geometry: g,
                                            group: attrs.group, activation: activation, residual: hasSum)
            let blocked = try BlockedConvolution(DNNLConvolution(engine: engine, inputShape: x.shape, weights: w, bias: ctx.optionalInput(2),
                                                                 geometry: g, group: attrs.group, activation: activation, residual: hasSum, layout: .blocked),
                                                 engine: engine)
            // Tactic: the faster of the two on these inputs, timed once per engine.
            let candidates = [FastLayer(.convolution(plain), inputShapes: shapes), FastLayer(.blocked(blocked), inputShapes: shapes)]
            let choice = try tactics.choose("\(ctx.name)|\(shapes)") {
                let stream = try DNNLStream(engine: engine)
                let times = try candidates.map { candidate -> UInt64 in
                    _ = try candidate.run(ctx, stream: stream)
                    var best = UInt64.max
                    for _ in 0..<3 {
                        let start = DispatchTime.now().uptimeNanoseconds
                        _ = try candidate.run(ctx, stream: stream)
                        best = min(best, DispatchTime.now().uptimeNanoseconds - start)
                    }
                    return best
                }
                return times[1] < times[0] ? 1 : 0
            }
            return candidates[choice]
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
        case .blocked(let b): return try b.run(stream: stream, ctx.input(0), residual: sum)
        case .matmul(let m, let shape): return try m.run(stream: stream, ctx.input(0), residual: sum).reshaped(shape)
        }
    }
}

/// A blocked-layout convolution wrapped with reorders from and to the plain layout,
/// with its blocked buffers allocated once.
final class BlockedConvolution {
    let convolution: DNNLConvolution
    let toBlocked: DNNLReorder
    let toPlain: DNNLReorder
    let residualToBlocked: DNNLReorder
    let input: UnsafeMutableRawPointer
    let output: UnsafeMutableRawPointer

    init(_ convolution: DNNLConvolution, engine: DNNLEngine) throws {
        self.convolution = convolution
        let inShape = try DNNLLayout.plain(Array(convolution.inputShapeForLayout))
        let outShape = try DNNLLayout.plain(convolution.outputShape)
        toBlocked = try DNNLReorder(engine: engine, from: inShape, to: convolution.inputDescriptor)
        toPlain = try DNNLReorder(engine: engine, from: convolution.outputDescriptor, to: outShape)
        residualToBlocked = try DNNLReorder(engine: engine, from: outShape, to: convolution.outputDescriptor)
        input = UnsafeMutableRawPointer.allocate(byteCount: convolution.inputDescriptor.byteCount, alignment: 64)
        output = UnsafeMutableRawPointer.allocate(byteCount: convolution.outputDescriptor.byteCount, alignment: 64)
    }

    deinit {
        input.deallocate()
        output.deallocate()
    }

    func run(stream: DNNLStream, _ x: Tensor, residual: Tensor?) throws -> Tensor {
        let values = x.floats
        try values.withUnsafeBytes { try toBlocked.run(stream: stream, from: $0.baseAddress!, to: input) }
        if let residual {
            // The sum post-op accumulates into the (blocked) destination.
            let r = residual.floats
            try r.withUnsafeBytes { try residualToBlocked.run(stream: stream, from: $0.baseAddress!, to: output) }
        }
        try convolution.runInPlace(stream: stream, input: input, output: output)
        var out = [Float](repeating: 0, count: convolution.outputShape.reduce(1, *))
        try out.withUnsafeMutableBytes { try toPlain.run(stream: stream, from: output, to: $0.baseAddress!) }
        return try Tensor(floats: out, shape: convolution.outputShape)
    }
}

/// Tactic decisions shared by all execution contexts of an engine: the first
/// context to meet a layer and shape measures, every later one reuses the choice.
public final class TacticChoices: @unchecked Sendable {
    private let lock = NSLock()
    private var choices: [String: Int] = [:]

    public init() {}

    /// The recorded choice for `key`, or the one `measure` makes (recorded for all).
    public func choose(_ key: String, measure: () throws -> Int) throws -> Int {
        lock.lock()
        defer { lock.unlock() }
        if let c = choices[key] { return c }
        let c = try measure()
        choices[key] = c
        return c
    }
}
