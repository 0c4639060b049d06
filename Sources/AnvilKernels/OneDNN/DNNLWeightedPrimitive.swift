import AnvilCore
import COneDNN

/// What convolution and matmul share: a oneDNN primitive with prepacked constant
/// weights, a bias, and a residual sum and activation fused as post-ops.
final class DNNLWeightedPrimitive {
    let primitive: DNNLPrimitive
    let engine: DNNLEngine
    /// Whether the destination must hold the residual before execution (sum post-op).
    let residual: Bool
    let weightDescriptor: dnnl_memory_desc_t
    let packedWeights: UnsafeMutableRawPointer
    let biasDescriptor: dnnl_memory_desc_t
    /// The bias values, 64-byte aligned, at a fixed address for prebound memory objects.
    let bias: UnsafeMutableBufferPointer<Float>
    /// Elements of the destination.
    let outputCount: Int

    /// Creates the primitive for `operation` (a oneDNN op descriptor), then reorders
    /// `weights` (row-major, described by `userWeights`) into its preferred layout.
    init<Operation>(_ operation: Operation, what: String, engine: DNNLEngine, activation: Activation?, residual: Bool,
                    weights: [Float], userWeights: dnnl_memory_desc_t, bias: [Float], biasDescriptor: dnnl_memory_desc_t, outputCount: Int) throws {
        primitive = try DNNLPrimitive(operation, attributes: try DNNLAttributes(sum: residual, activation: activation), engine: engine, what: what)
        self.engine = engine
        self.residual = residual
        weightDescriptor = primitive.query(dnnl_query_weights_md)
        packedWeights = try prepack(weights, from: userWeights, to: weightDescriptor, engine: engine)
        self.bias = .allocate(capacity: max(bias.count, 1))
        _ = self.bias.initialize(from: bias)
        self.biasDescriptor = biasDescriptor
        self.outputCount = outputCount
    }

    deinit {
        packedWeights.deallocate()
        bias.deallocate()
    }

    /// Memory objects for the weights and bias (the source and destination come from the caller).
    func constantArguments() throws -> [(Int32, DNNLMemory)] {
        [(DNNL_ARG_WEIGHTS, try DNNLMemory(weightDescriptor, engine: engine, data: packedWeights)),
         (DNNL_ARG_BIAS, try DNNLMemory(biasDescriptor, engine: engine, data: UnsafeMutableRawPointer(bias.baseAddress!)))]
    }

    var implementation: String { primitive.implementation }

    /// Executes on buffers in the primitive's source and destination layouts; with a
    /// residual, `output` must already hold it (the sum post-op accumulates into it).
    func execute(stream: DNNLStream, input: UnsafeMutableRawPointer, output: UnsafeMutableRawPointer) throws {
        let src = try DNNLMemory(primitive.query(dnnl_query_src_md), engine: engine, data: input)
        let dst = try DNNLMemory(primitive.query(dnnl_query_dst_md), engine: engine, data: output)
        try primitive.execute(stream, [(DNNL_ARG_SRC, src), (DNNL_ARG_DST, dst)] + constantArguments())
    }

    /// Runs on plain buffers, copying the residual into the output first.
    func run(stream: DNNLStream, input: UnsafePointer<Float>, residual: UnsafePointer<Float>?, output: UnsafeMutablePointer<Float>, what: String) throws {
        if self.residual {
            guard let residual else { throw AnvilError.invalidTensor(name: what, reason: "residual input missing") }
            output.update(from: residual, count: outputCount)
        }
        try execute(stream: stream, input: UnsafeMutableRawPointer(mutating: input), output: UnsafeMutableRawPointer(output))
    }

    /// Runs on tensors, allocating the output of `shape`.
    func run(stream: DNNLStream, _ x: Tensor, residual: Tensor?, outputShape shape: [Int], what: String) throws -> Tensor {
        var out = [Float](repeating: 0, count: outputCount)
        let input = x.floats, sum = residual?.floats
        try input.withUnsafeBufferPointer { i in
            try out.withUnsafeMutableBufferPointer { o in
                if let sum {
                    try sum.withUnsafeBufferPointer { try run(stream: stream, input: i.baseAddress!, residual: $0.baseAddress!, output: o.baseAddress!, what: what) }
                } else {
                    try run(stream: stream, input: i.baseAddress!, residual: nil, output: o.baseAddress!, what: what)
                }
            }
        }
        return try Tensor(floats: out, shape: shape)
    }
}
