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
    let bias: [Float]
    /// Elements of the destination.
    let outputCount: Int

    /// Creates the primitive for `operation` (a oneDNN op descriptor), then reorders
    /// `weights` (row-major, described by `userWeights`) into its preferred layout.
    init<Operation>(_ operation: Operation, what: String, engine: DNNLEngine, activation: Activation?, residual: Bool,
                    weights: [Float], userWeights: dnnl_memory_desc_t, bias: [Float], biasDescriptor: dnnl_memory_desc_t, outputCount: Int) throws {
        let attributes = try DNNLAttributes(sum: residual, activation: activation)
        var op = operation
        var pd: dnnl_primitive_desc_t?
        try withUnsafePointer(to: &op) { p in
            try check(dnnl_primitive_desc_create(&pd, UnsafeRawPointer(p), attributes.handle, engine.handle, nil), "choosing a \(what) implementation")
        }
        primitive = try DNNLPrimitive(descriptor: pd!)
        self.engine = engine
        self.residual = residual
        weightDescriptor = primitive.query(dnnl_query_weights_md)
        packedWeights = try prepack(weights, from: userWeights, to: weightDescriptor, engine: engine)
        self.bias = bias
        self.biasDescriptor = biasDescriptor
        self.outputCount = outputCount
    }

    deinit { packedWeights.deallocate() }

    var implementation: String { primitive.implementation }

    /// Executes on buffers in the primitive's source and destination layouts; with a
    /// residual, `output` must already hold it (the sum post-op accumulates into it).
    func execute(stream: DNNLStream, input: UnsafeMutableRawPointer, output: UnsafeMutableRawPointer) throws {
        let src = try DNNLMemory(primitive.query(dnnl_query_src_md), engine: engine, data: input)
        let weights = try DNNLMemory(weightDescriptor, engine: engine, data: packedWeights)
        let dst = try DNNLMemory(primitive.query(dnnl_query_dst_md), engine: engine, data: output)
        var biasValues = bias
        try biasValues.withUnsafeMutableBytes { b in
            let biasMemory = try DNNLMemory(biasDescriptor, engine: engine, data: b.baseAddress)
            try primitive.execute(stream, [(DNNL_ARG_SRC, src), (DNNL_ARG_WEIGHTS, weights), (DNNL_ARG_BIAS, biasMemory), (DNNL_ARG_DST, dst)])
            try stream.wait()
        }
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
