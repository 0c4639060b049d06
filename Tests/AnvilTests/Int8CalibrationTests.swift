import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilKernels
import AnvilOps
import AnvilONNX
import AnvilRuntime
import Foundation
import XCTest

/// Calibrated INT8 (--int8, --calib, --calibMethod, --calibCache) on fixtures/quantized's
/// float residual CNN: the weighted layers but the first and last become INT8 layers that
/// hand 8-bit tensors to each other, the outputs stay close to FP32, the ranges survive a
/// calibration cache, and bad caches and flags are refused by name.
final class Int8CalibrationTests: XCTestCase {
    let model = TestSupport.fixture("quantized/float_resnet/model.onnx")

    func samples(_ count: Int, seed: UInt64 = 5) throws -> [[String: Tensor]] {
        var rng = SeededGenerator(seed: seed)
        return try (0..<count).map { _ in
            ["input": try Tensor(floats: (0..<(3 * 20 * 20)).map { _ in Float.random(in: -2.5...2.5, using: &rng) }, shape: [1, 3, 20, 20])]
        }
    }

    /// The fixture's data sets: inputs and ONNX Runtime's FP32 outputs.
    func dataSets() throws -> [(feeds: [String: Tensor], expected: Tensor)] {
        try TestDataSet.folders(under: TestSupport.fixture("quantized/float_resnet")).map { folder in
            let data = try TestDataSet.load(folder)
            return (["input": data.inputs[0].tensor], data.outputs[0].tensor)
        }
    }

    func build(_ configure: (inout EngineBuilder) -> Void) throws -> EngineBuilder.Result {
        var builder = EngineBuilder()
        builder.precision.int8 = true
        builder.calibration = try samples(16)
        configure(&builder)
        return try builder.build(try ONNXImporter.load(path: model), name: "float_resnet")
    }

    func outputs(_ result: EngineBuilder.Result) throws -> [[Float]] {
        let context = ExecutionContext(engine: result.engine)
        return try dataSets().map { try context.run($0.feeds)[0].value.floats }
    }

    func testInt8LayersHandEightBitTensorsOnAndStayCloseToFP32() throws {
        let result = try build { _ in }
        let layers = result.graph.layers
        XCTAssertTrue(layers.allSatisfy { $0.decision?.isSlowPath == false }, "\(layers.filter { $0.decision?.isSlowPath != false }.map(\.name))")
        // 8 convolutions and the classifier: all but the first and the last in INT8.
        XCTAssertEqual(result.int8Layers.count, 7, "\(result.int8Layers)")
        let int8 = layers.filter { $0.decision?.precision == .int8 && $0.decision?.kernel == .quantizedConvolution }
        XCTAssertEqual(int8.count, 7)
        XCTAssertEqual(layers.filter { $0.decision?.kernel == .convolution }.count, 1, "the stem stays FP32")
        XCTAssertEqual(layers.filter { $0.decision?.kernel == .matmul }.count, 1, "the classifier stays FP32")
        // Quantized layers write 8 bits for the next one (residual sums included).
        let plan = try XCTUnwrap(result.compiled.plan)
        let eightBit = int8.filter { [.uint8, .int8].contains(plan.dataType(of: $0.outputs[0])) }
        XCTAssertGreaterThanOrEqual(eightBit.count, 5, "\(int8.map { "\($0.name): \(String(describing: plan.dataType(of: $0.outputs[0])))" })")
        XCTAssertTrue(int8.contains { $0.decision?.postOps.residual == true })
        // One quantization where the FP32 stem's (pooled) output enters; the 8-bit tensors stay 8-bit to the last INT8 layer.
        XCTAssertEqual(layers.filter { $0.opType == "QuantizeLinear" }.count, 1, "\(layers.map(\.opType))")
        for (actual, (_, expected)) in zip(try outputs(result), try dataSets()) {
            let cosine = OutputComparison.cosine(actual.map(Double.init), expected.doubles)
            XCTAssertGreaterThan(cosine, 0.99)
            XCTAssertNotEqual(actual, expected.floats, "INT8 must round somewhere")
        }
    }

    func testEveryMethodCalibratesAndTheCacheReproducesTheBuild() throws {
        var ranges: [CalibrationMethod: Int8Calibration] = [:]
        for method in CalibrationMethod.allCases {
            let result = try build { $0.calibrationMethod = method }
            ranges[method] = try XCTUnwrap(result.int8Calibration)
            for (actual, (_, expected)) in zip(try outputs(result), try dataSets()) {
                XCTAssertGreaterThan(OutputComparison.cosine(actual.map(Double.init), expected.doubles), 0.98, "\(method)")
            }
            // Read back from its cache, without samples: the same engine.
            let cached = try Int8Calibration(cache: try ranges[method]!.encoded(), file: "cache.json")
            XCTAssertEqual(cached.ranges.count, ranges[method]!.ranges.count)
            let again = try build { $0.calibration = []; $0.int8Calibration = cached }
            XCTAssertEqual(try outputs(again), try outputs(result), "\(method)")
        }
        // minmax keeps every value; the others clip.
        for (name, r) in ranges[.minmax]!.ranges {
            for method in [CalibrationMethod.entropy, .percentile] {
                XCTAssertLessThanOrEqual(ranges[method]!.ranges[name]!.high, r.high * (1 + 1e-6), "\(method) \(name)")
            }
        }
    }

    func testThresholds() {
        // Uniform magnitudes: the 99th percentile of 100 equal bins is the 99th bin's end.
        XCTAssertEqual(Int8Calibration.percentileThreshold(Array(repeating: 1, count: 100), binWidth: 0.5, 99), 49.5, accuracy: 1e-9)
        // A bell of magnitudes with a few far outliers: entropy clips the outliers, keeps the bell.
        var h = (0..<2048).map { i in 1e6 * exp(-Double(i * i) / (2 * 200 * 200)) }
        for i in 1900..<1905 { h[i] += 1 }
        let t = Int8Calibration.entropyThreshold(h, binWidth: 1, levels: 128)
        XCTAssertGreaterThan(t, 400)
        XCTAssertLessThan(t, 1900)
    }

    func testPinnedLayersAndBadCachesAreObeyedAndRefused() throws {
        let source = try ONNXImporter.load(path: model)
        let stem = try XCTUnwrap(source.graph.nodes.first { $0.opType == "Conv" }).name
        // Only the pinned stem in INT8; everything else FP32.
        let pinned = try build { $0.precision = PrecisionPolicy(layerPrecisions: [stem: .int8]) }
        XCTAssertEqual(pinned.int8Layers, [stem])
        // --int8 with one layer pinned to FP32.
        let second = try XCTUnwrap(source.graph.nodes.filter { $0.opType == "Conv" }.dropFirst().first).name
        let kept = try build { $0.precision.layerPrecisions = [second: .fp32] }
        XCTAssertFalse(kept.int8Layers.contains(second))
        XCTAssertEqual(kept.int8Layers.count, 6)
        // Caches: not JSON, another format, a bad range, ranges of another model.
        for (bytes, message) in [("not json", "not a JSON object"), ("{\"anvilCalibration\": 2}", "version 1"),
                                 ("{\"anvilCalibration\": 1, \"method\": \"minmax\", \"ranges\": {\"x\": [1, 2]}}", "the range of 'x'"),
                                 ("{\"anvilCalibration\": 1, \"method\": \"magic\", \"ranges\": {}}", "method")] {
            XCTAssertThrowsError(try Int8Calibration(cache: Array(bytes.utf8), file: "bad.json")) { error in
                XCTAssertTrue("\(error)".contains("bad.json") && "\(error)".contains(message), "\(error)")
            }
        }
        let foreign = Int8Calibration(method: .minmax, ranges: ["elsewhere": .init(low: 0, high: 1)])
        XCTAssertThrowsError(try build { $0.calibration = []; $0.int8Calibration = foreign }) { error in
            XCTAssertTrue("\(error)".contains("has no range for"), "\(error)")
        }
        XCTAssertThrowsError(try build { $0.calibration = [] }) { error in XCTAssertTrue("\(error)".contains("--calib"), "\(error)") }
    }

    func testLayerOutputTypesAndWildcardsAreObeyed() throws {
        let normal = try build { _ in }
        let plan = try XCTUnwrap(normal.compiled.plan)
        let int8 = normal.graph.layers.filter { $0.decision?.precision == .int8 && $0.decision?.kernel == .quantizedConvolution }
        func eightBit(_ r: EngineBuilder.Result, _ layer: String) throws -> Bool {
            let l = try XCTUnwrap(r.graph.layers.first { $0.name == layer })
            return [.uint8, .int8].contains(try XCTUnwrap(r.compiled.plan).dataType(of: l.outputs[0]))
        }
        let writer = try XCTUnwrap(int8.first { [.uint8, .int8].contains(plan.dataType(of: $0.outputs[0])) }).name
        let floatWriter = try XCTUnwrap(int8.first { plan.dataType(of: $0.outputs[0]) == .float }).name
        // One layer writing FP32 where it wrote 8 bits, one writing 8 bits where it wrote FP32.
        let swapped = try build { $0.precision.layerOutputTypes = [writer: .fp32, floatWriter: .int8] }
        XCTAssertFalse(try eightBit(swapped, writer))
        XCTAssertTrue(try eightBit(swapped, floatWriter))
        // "*": every INT8 layer writes FP32, so each quantizes its own input.
        let float = try build { $0.precision.layerOutputTypes = ["*": .fp32] }
        XCTAssertEqual(float.int8Layers.count, 7)
        XCTAssertTrue(try float.int8Layers.allSatisfy { try !eightBit(float, $0) })
        XCTAssertGreaterThanOrEqual(float.graph.layers.filter { $0.opType == "QuantizeLinear" }.count, 6)
        for result in [swapped, float] {
            for (actual, (_, expected)) in zip(try outputs(result), try dataSets()) {
                XCTAssertGreaterThan(OutputComparison.cosine(actual.map(Double.init), expected.doubles), 0.99)
            }
        }
        // "*:int8" precision takes the first and last layers too; a layer's own name wins over "*".
        let stem = try XCTUnwrap(normal.graph.layers.first { $0.decision?.kernel == .convolution }).fusedFrom[0]
        let all = try build { $0.precision.layerPrecisions = ["*": .int8, stem: .fp32] }
        XCTAssertEqual(all.int8Layers.count, 8, "\(all.int8Layers)")
        XCTAssertFalse(all.int8Layers.contains(stem))
        // An 8-bit output asked of an FP32 layer, and FP16 outputs, are refused by name.
        XCTAssertThrowsError(try build { $0.precision.layerOutputTypes = [stem: .int8] }) { error in
            XCTAssertTrue("\(error)".contains("cannot write INT8"), "\(error)")
        }
        XCTAssertThrowsError(try build { $0.precision.layerOutputTypes = [writer: .fp16] }) { error in
            XCTAssertTrue("\(error)".contains("cannot write FP16"), "\(error)")
        }
    }

    func testCommandLineWritesAndReusesTheCalibrationCache() throws {
        let folder = try TestSupport.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        for (i, sample) in try samples(4).enumerated() {
            try FileManager.default.createDirectory(atPath: "\(folder)/calib/test_data_set_\(i)", withIntermediateDirectories: true)
            try Data(try TensorFiles.encodeTensorProto(sample["input"]!, name: "input")).write(to: URL(fileURLWithPath: "\(folder)/calib/test_data_set_\(i)/input_0.pb"))
        }
        let cache = folder + "/ranges.json"
        // The same timing cache for both builds: the FP32 layers' tactics do not vary with the machine's load.
        let timing = folder + "/timing.cache"
        let first = try TestSupport.run(["build", model, "-o", folder + "/a.anvil", "--int8", "--calib", folder + "/calib", "--calibCache", cache,
                                         "--timingCacheFile", timing])
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertTrue(first.stdout.contains("INT8: 7 of 9 weighted layers (calibrated with percentile on 4 samples)"), first.stdout)
        XCTAssertTrue(FileManager.default.fileExists(atPath: cache))
        let second = try TestSupport.run(["build", model, "-o", folder + "/b.anvil", "--int8", "--calibCache", cache, "--timingCacheFile", timing])
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(second.stdout.contains("ranges from \(cache)"), second.stdout)
        XCTAssertEqual(FileManager.default.contents(atPath: folder + "/a.anvil"), FileManager.default.contents(atPath: folder + "/b.anvil"))
        for (arguments, message) in [(["--int8"], "--int8 calibrates on sample inputs"), (["--int8", "--calib", folder + "/calib", "--calibMethod", "magic"], "--calibMethod 'magic'"),
                                     (["--calibCache", cache], "--calibCache holds INT8 ranges"), (["--calib", folder + "/calib"], "--calib is read by --int8")] {
            let r = try TestSupport.run(["build", model, "-o", folder + "/c.anvil"] + arguments)
            XCTAssertNotEqual(r.status, 0)
            XCTAssertTrue(r.stderr.contains(message), "\(arguments): \(r.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/c.anvil"))
        }
    }

    func testActivationsThatDoNotCommuteWithScalingRunOnRealValues() throws {
        // Conv → SiLU → Conv → GELU (as x · sigmoid(x) and the erf formula, which the optimizer
        // recognizes and fuses): 8-bit output of the first, float output of the last, both INT8.
        var rng = SeededGenerator(seed: 11)
        func random(_ shape: [Int], _ scale: Float) throws -> Tensor {
            try Tensor(floats: (0..<shape.reduce(1, *)).map { _ in Float.random(in: -scale...scale, using: &rng) }, shape: shape)
        }
        let graph = Graph(name: "act", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1, 8, 12, 12]))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, shape: [1, 16, 12, 12]))],
                          nodes: [Node(name: "conv1", opType: "Conv", inputs: ["x", "w1", "b1"], outputs: ["c1"], attributes: ["pads": .ints([1, 1, 1, 1])]),
                                  Node(name: "sig", opType: "Sigmoid", inputs: ["c1"], outputs: ["s1"]),
                                  Node(name: "silu", opType: "Mul", inputs: ["c1", "s1"], outputs: ["a1"]),
                                  Node(name: "conv2", opType: "Conv", inputs: ["a1", "w2", "b2"], outputs: ["c2"]),
                                  Node(name: "gelu", opType: "Gelu", inputs: ["c2"], outputs: ["y"])])
        for (name, t) in [("w1", try random([16, 8, 3, 3], 0.3)), ("b1", try random([16], 0.2)), ("w2", try random([16, 16, 1, 1], 0.4)), ("b2", try random([16], 0.2))] {
            graph.setInitializer(name, t)
        }
        let model = Model(graph: graph, opsets: [OpsetImport(domain: "", version: 20)])
        var builder = EngineBuilder()
        builder.precision = PrecisionPolicy(layerPrecisions: ["conv1": .int8, "conv2": .int8])
        builder.calibration = try (0..<8).map { _ in ["x": try random([1, 8, 12, 12], 2)] }
        let result = try builder.build(model, name: "act")
        let layers = result.graph.layers.filter { $0.decision?.kernel == .quantizedConvolution }
        XCTAssertEqual(layers.count, 2, "\(result.graph.layers.map { "\($0.name): \($0.opType)" })")
        XCTAssertEqual(layers.compactMap { $0.decision?.postOps.activation.map { "\($0)" } }.count, 2, "\(layers.map { $0.decision! })")
        let plan = try XCTUnwrap(result.compiled.plan)
        XCTAssertTrue([.uint8, .int8].contains(plan.dataType(of: layers[0].outputs[0])), "the first hands 8 bits to the second")
        let context = ExecutionContext(engine: result.engine)
        for _ in 0..<3 {
            let feed = ["x": try random([1, 8, 12, 12], 2)]
            let expected = try ReferenceExecutor(model: model).run(feed)[0].value
            let actual = try context.run(feed)[0].value
            XCTAssertGreaterThan(OutputComparison.cosine(actual.doubles, expected.doubles), 0.999)
        }
    }
}
