import AnvilCore
import COneDNN

/// A oneDNN matrix multiplication Y[M×N] = A[M×K] · W[K×N] with a constant,
/// prepacked W, and bias, residual sum and activation fused as post-ops. Serves
/// MatMul and FusedMatMul with constant weights (batch dimensions of A folded into
/// M) and Gemm (transB, α folded into W).
public final class DNNLMatMul {
    public let implementation: String
    public let m: Int, k: Int, n: Int
    let primitive: DNNLPrimitive
    let engine: DNNLEngine
    let residual: Bool
    let packedWeights: UnsafeMutableRawPointer
    let weightDescriptor: dnnl_memory_desc_t
    let bias: [Float]

    /// `weights` is K×N, or N×K when `transposedWeights` (Gemm's transB); `alpha` scales it.
    public init(engine: DNNLEngine, m: Int, weights: Tensor, transposedWeights: Bool = false, alpha: Float = 1,
                bias: Tensor?, activation: Activation?, residual: Bool) throws {
        guard weights.rank == 2, m > 0 else {
            throw AnvilError.invalidTensor(name: "MatMul", reason: "weights must be 2-D and M positive, got \(weights.shape), M = \(m)")
        }
        k = transposedWeights ? weights.shape[1] : weights.shape[0]
        n = transposedWeights ? weights.shape[0] : weights.shape[1]
        self.m = m
        if let bias, bias.count != n { throw AnvilError.invalidTensor(name: "MatMul", reason: "bias has \(bias.count) values for N = \(n)") }
        var src = try memoryDescriptor([m, k], dnnl_ab)
        var anyWeights = try memoryDescriptor([k, n], dnnl_format_tag_any)
        var biasDesc = try memoryDescriptor([1, n], dnnl_ab)
        var dst = try memoryDescriptor([m, n], dnnl_ab)
        var desc = dnnl_matmul_desc_t()
        try check(dnnl_matmul_desc_init(&desc, &src, &anyWeights, &biasDesc, &dst), "describing the matmul")
        let attributes = try DNNLAttributes(sum: residual, activation: activation)
        var pd: dnnl_primitive_desc_t?
        try check(dnnl_primitive_desc_create(&pd, &desc, attributes.handle, engine.handle, nil), "choosing a matmul implementation")
        primitive = try DNNLPrimitive(descriptor: pd!)
        implementation = primitive.implementation
        self.engine = engine
        self.residual = residual
        self.bias = bias?.floats ?? Array(repeating: 0, count: n)
        // Prepack W (K×N; "ba" reads an N×K matrix as its transpose).
        weightDescriptor = primitive.query(dnnl_query_weights_md)
        let values = alpha == 1 ? weights.floats : weights.floats.map { $0 * alpha }
        packedWeights = try prepack(values, from: try memoryDescriptor([k, n], transposedWeights ? dnnl_ba : dnnl_ab), to: weightDescriptor, engine: engine)
    }

    deinit { packedWeights.deallocate() }

    public func run(stream: DNNLStream, a: UnsafePointer<Float>, residual: UnsafePointer<Float>?, output: UnsafeMutablePointer<Float>) throws {
        if self.residual {
            guard let residual else { throw AnvilError.invalidTensor(name: "MatMul", reason: "residual input missing") }
            output.update(from: residual, count: m * n)
        }
        let src = try DNNLMemory(primitive.query(dnnl_query_src_md), engine: engine, data: UnsafeMutableRawPointer(mutating: a))
        let weights = try DNNLMemory(weightDescriptor, engine: engine, data: packedWeights)
        let dst = try DNNLMemory(primitive.query(dnnl_query_dst_md), engine: engine, data: UnsafeMutableRawPointer(output))
        var b = bias
        try b.withUnsafeMutableBytes { raw in
            let biasMemory = try DNNLMemory(try memoryDescriptor([1, n], dnnl_ab), engine: engine, data: raw.baseAddress)
            try primitive.execute(stream, [(DNNL_ARG_SRC, src), (DNNL_ARG_WEIGHTS, weights), (DNNL_ARG_BIAS, biasMemory), (DNNL_ARG_DST, dst)])
            try stream.wait()
        }
    }

    /// Convenience on tensors: `a` is [..., K]; the result is [..., N].
    public func run(stream: DNNLStream, _ a: Tensor, residual: Tensor? = nil) throws -> Tensor {
        guard a.shape.last == k, a.count == m * k else { throw AnvilError.invalidTensor(name: "MatMul", reason: "input \(a.shape) does not fit M = \(m), K = \(k)") }
        var out = [Float](repeating: 0, count: m * n)
        let input = a.floats, sum = residual?.floats
        try input.withUnsafeBufferPointer { i in
            try out.withUnsafeMutableBufferPointer { o in
                if let sum {
                    try sum.withUnsafeBufferPointer { try run(stream: stream, a: i.baseAddress!, residual: $0.baseAddress!, output: o.baseAddress!) }
                } else {
                    try run(stream: stream, a: i.baseAddress!, residual: nil, output: o.baseAddress!)
                }
            }
        }
        return try Tensor(floats: out, shape: Array(a.shape.dropLast()) + [n])
    }
}
