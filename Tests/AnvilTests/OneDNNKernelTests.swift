import AnvilCore
import AnvilKernels
import XCTest

/// oneDNN kernels against the reference kernels on many random shapes.
final class OneDNNKernelTests: XCTestCase {
    func random(_ shape: [Int], _ rng: inout SeededGenerator) throws -> Tensor {
        try Tensor(floats: (0..<shape.reduce(1, *)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: shape)
    }

    func testConvolutionMatchesReferenceOnRandomShapes() throws {
        let engine = try DNNLEngine()
        let stream = try DNNLStream(engine: engine)
        var rng = SeededGenerator(seed: 2026)
        let activations: [Activation?] = [nil, .relu, .leakyRelu(alpha: 0.1), .clip(min: 0, max: 6), .sigmoid, .tanh,
                                          .hardSigmoid(alpha: 0.2, beta: 0.5), .hardSwish, .elu(alpha: 1), .mish, .gelu, .geluTanh, .silu]
        var implementations = Set<String>()
        for trial in 0..<120 {
            let spatial = [1, 2, 2, 2, 3][trial % 5]
            let depthwise = trial % 7 == 0
            let group = depthwise ? 4 : [1, 1, 2][trial % 3]
            let cin = depthwise ? 4 : group * Int.random(in: 1...4, using: &rng)
            let cout = depthwise ? 4 : group * Int.random(in: 1...5, using: &rng)
            let kernel = (0..<spatial).map { _ in Int.random(in: 1...3, using: &rng) }
            let strides = (0..<spatial).map { _ in Int.random(in: 1...2, using: &rng) }
            let dilations = (0..<spatial).map { _ in Int.random(in: 1...2, using: &rng) }
            let pads = (0..<(2 * spatial)).map { _ in Int.random(in: 0...2, using: &rng) }
            let size = (0..<spatial).map { i in Int.random(in: ((kernel[i] - 1) * dilations[i] + 1)...(spatial == 3 ? 6 : 10), using: &rng) }
            let input = [Int.random(in: 1...2, using: &rng), cin] + size
            let x = try random(input, &rng)
            let w = try random([cout, cin / group] + kernel, &rng)
            let b = Bool.random(using: &rng) ? try random([cout], &rng) : nil
            let g = try WindowGeometry(input: size, kernel: kernel, strides: strides, dilations: dilations, pads: pads, autoPad: .notSet)
            guard g.output.allSatisfy({ $0 > 0 }) else { continue }
            let activation = activations[trial % activations.count]
            let residual = trial % 3 == 0 ? try random([input[0], cout] + g.output, &rng) : nil
            let conv = try DNNLConvolution(engine: engine, inputShape: input, weights: w, bias: b, geometry: g, group: group,
                                           activation: activation, residual: residual != nil)
            implementations.insert(conv.implementation)
            let actual = try conv.run(stream: stream, x, residual: residual)
            var expected = try Linear.conv(x, w, b, geometry: g, group: group)
            if let residual { expected = try Elementwise.arithmetic(expected, residual, op: "Add", float: +, integer: &+) }
            if let activation { expected = try activation.apply(expected) }
            let c = Comparison.compare(actual: actual, expected: expected, atol: 1e-4, rtol: 1e-3)
            XCTAssertTrue(c.passed, "trial \(trial) \(input) w\(w.shape) g\(group) s\(strides) d\(dilations) p\(pads) \(String(describing: activation)): \(c)")
        }
        print("oneDNN convolution implementations used: \(implementations.sorted())")
    }
}

extension OneDNNKernelTests {
    /// Blocked layouts (reordered in and out) give the same results as the reference.
    func testBlockedConvolutionChainMatchesReference() throws {
        let engine = try DNNLEngine()
        let stream = try DNNLStream(engine: engine)
        var rng = SeededGenerator(seed: 7)
        for (cin, cout, size, k, group) in [(3, 16, 20, 3, 1), (16, 32, 14, 3, 1), (32, 32, 9, 3, 32), (17, 5, 8, 1, 1)] {
            let x = try random([1, cin, size, size], &rng)
            let w = try random([cout, cin / group, k, k], &rng)
            let g = try WindowGeometry(input: [size, size], kernel: [k, k], strides: nil, dilations: nil, pads: Array(repeating: k / 2, count: 4), autoPad: .notSet)
            let conv = try DNNLConvolution(engine: engine, inputShape: x.shape, weights: w, bias: nil, geometry: g, group: group,
                                           activation: .relu, residual: false, tactic: ConvolutionTactic(layout: .preferred))
            let toBlocked = try DNNLReorder(engine: engine, from: try .plain(x.shape), to: conv.inputDescriptor)
            let toPlain = try DNNLReorder(engine: engine, from: conv.outputDescriptor, to: try .plain(conv.outputShape))
            let blockedIn = UnsafeMutableRawPointer.allocate(byteCount: conv.inputDescriptor.byteCount, alignment: 64)
            let blockedOut = UnsafeMutableRawPointer.allocate(byteCount: conv.outputDescriptor.byteCount, alignment: 64)
            defer { blockedIn.deallocate(); blockedOut.deallocate() }
            var out = [Float](repeating: 0, count: conv.outputShape.reduce(1, *))
            let input = x.floats
            try input.withUnsafeBytes { try toBlocked.run(stream: stream, from: $0.baseAddress!, to: blockedIn) }
            try conv.run(stream: stream, input: blockedIn.assumingMemoryBound(to: Float.self), residual: nil, output: blockedOut.assumingMemoryBound(to: Float.self))
            try out.withUnsafeMutableBytes { try toPlain.run(stream: stream, from: blockedOut, to: $0.baseAddress!) }
            let expected = try Activation.relu.apply(Linear.conv(x, w, nil, geometry: g, group: group))
            let c = Comparison.compare(actual: try Tensor(floats: out, shape: conv.outputShape), expected: expected, atol: 1e-4, rtol: 1e-3)
            XCTAssertTrue(c.passed, "\(cin)->\(cout) \(size) k\(k) g\(group) [\(conv.implementation)]: \(c)")
        }
    }
}

extension OneDNNKernelTests {
    func testMatMulMatchesReferenceOnRandomShapes() throws {
        let engine = try DNNLEngine()
        let stream = try DNNLStream(engine: engine)
        var rng = SeededGenerator(seed: 99)
        let activations: [Activation?] = [nil, .relu, .gelu, .geluTanh, .silu, .tanh, .sigmoid, .hardSigmoid(alpha: 0.2, beta: 0.5)]
        for trial in 0..<60 {
            let batch = [[], [2], [2, 3]][trial % 3]
            let m = Int.random(in: 1...40, using: &rng), k = Int.random(in: 1...70, using: &rng), n = Int.random(in: 1...50, using: &rng)
            let transposed = trial % 4 == 1
            let alpha: Float = trial % 5 == 2 ? 0.5 : 1
            let a = try random(batch + [m, k], &rng)
            let w = try random(transposed ? [n, k] : [k, n], &rng)
            let bias = trial % 2 == 0 ? try random([n], &rng) : nil
            let residual = trial % 3 == 0 ? try random(batch + [m, n], &rng) : nil
            let activation = activations[trial % activations.count]
            let kernel = try DNNLMatMul(engine: engine, m: a.count / k, weights: w, transposedWeights: transposed, alpha: alpha,
                                        bias: bias, activation: activation, residual: residual != nil)
            let actual = try kernel.run(stream: stream, a, residual: residual)
            let wk = transposed ? try Movement.transpose(w, perm: [1, 0]) : w
            var expected = try Linear.matmul(a, alpha == 1 ? wk : wk.mapFloating { $0 * Double(alpha) })
            if let bias { expected = try Elementwise.arithmetic(expected, bias, op: "Add", float: +, integer: &+) }
            if let residual { expected = try Elementwise.arithmetic(expected, residual, op: "Add", float: +, integer: &+) }
            if let activation { expected = try activation.apply(expected) }
            let c = Comparison.compare(actual: actual, expected: expected, atol: 1e-4, rtol: 1e-3)
            XCTAssertTrue(c.passed, "trial \(trial) a\(a.shape) w\(w.shape) t\(transposed) [\(kernel.implementation)]: \(c)")
        }
    }
}
