import AnvilCore
import COneDNN

/// A oneDNN matrix multiplication Y[M×N] = A[M×K] · W[K×N] with a constant,
/// prepacked W, and bias, residual sum and activation fused as post-ops. Serves
/// MatMul and FusedMatMul with constant weights (batch dimensions of A folded into
/// M) and Gemm (transB, α folded into W).
public final class DNNLMatMul {
    public var implementation: String { kernel.implementation }
    public let m: Int, k: Int, n: Int
    let kernel: DNNLWeightedPrimitive

    /// `weights` is K×N, or N×K when `transposedWeights` (Gemm's transB); `alpha` scales it.
    public convenience init(engine: DNNLEngine, m: Int, weights: Tensor, transposedWeights: Bool = false, alpha: Float = 1,
                            bias: Tensor?, activation: Activation?, exactNonFinite: Bool = true, residual: Bool) throws {
        try self.init(engine: engine, m: m, weights: KernelWeights(weights), transposedWeights: transposedWeights, alpha: alpha,
                      bias: bias, activation: activation, exactNonFinite: exactNonFinite, residual: residual)
    }

    /// As above, using prepacked weights in place when one fits.
    /// `precision` BF16: input and weights in BF16, the bias, accumulation and output in FP32
    /// (the output in BF16 with `bf16Output`).
    public init(engine: DNNLEngine, m: Int, weights: KernelWeights, transposedWeights: Bool = false, alpha: Float = 1,
                bias: Tensor?, activation: Activation?, exactNonFinite: Bool = true, residual: Bool, precision: Precision = .fp32,
                bf16Output: Bool = false, quantization: DNNLQuantization? = nil) throws {
        guard weights.rank == 2, m > 0 else {
            throw AnvilError.invalidTensor(name: "MatMul", reason: "weights must be 2-D and M positive, got \(weights.shape), M = \(m)")
        }
        k = transposedWeights ? weights.shape[1] : weights.shape[0]
        n = transposedWeights ? weights.shape[0] : weights.shape[1]
        self.m = m
        if let bias, bias.count != n { throw AnvilError.invalidTensor(name: "MatMul", reason: "bias has \(bias.count) values for N = \(n)") }
        _ = try MemoryPolicy.checkedCount([m, n], .float, for: "the matmul's output")
        // INT8: 8-bit input and output (the quantization's types), s8 weights, FP32 bias in accumulator units.
        let (sourceType, weightType, destinationType) = try DNNLQuantization.types(precision, quantization, floatBF16Result: !bf16Output, what: "matmul")
        var src = try memoryDescriptor([m, k], dnnl_ab, sourceType)
        var anyWeights = try memoryDescriptor([k, n], dnnl_format_tag_any, weightType)
        var biasDesc = try memoryDescriptor([1, n], dnnl_ab)
        var dst = try memoryDescriptor([m, n], dnnl_ab, destinationType)
        var desc = dnnl_matmul_desc_t()
        try check(dnnl_matmul_desc_init(&desc, &src, &anyWeights, &biasDesc, &dst), "describing the matmul")
        // W is K×N; "ba" reads an N×K matrix as its transpose.
        kernel = try DNNLWeightedPrimitive(desc, what: "matmul", engine: engine, activation: activation, exactNonFinite: exactNonFinite, residual: residual,
                                           reducedPrecision: precision != .fp32, quantization: quantization,
                                           weights: weights.scaled(alpha),
                                           userWeights: try memoryDescriptor([k, n], transposedWeights ? dnnl_ba : dnnl_ab),
                                           bias: bias?.floats ?? Array(repeating: 0, count: n), biasDescriptor: biasDesc, outputCount: m * n)
    }

    public func run(stream: DNNLStream, a: UnsafePointer<Float>, residual: UnsafePointer<Float>?, output: UnsafeMutablePointer<Float>) throws {
        try kernel.run(stream: stream, input: a, residual: residual, output: output, what: "MatMul")
    }

    /// Convenience on tensors: `a` is [..., K]; the result is [..., N].
    public func run(stream: DNNLStream, _ a: Tensor, residual: Tensor? = nil) throws -> Tensor {
        guard a.shape.last == k, a.count == m * k else { throw AnvilError.invalidTensor(name: "MatMul", reason: "input \(a.shape) does not fit M = \(m), K = \(k)") }
        return try kernel.run(stream: stream, a, residual: residual, outputShape: Array(a.shape.dropLast()) + [n], what: "MatMul")
    }
}
