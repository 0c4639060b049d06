import AnvilCore
import AnvilIR
import AnvilOps
import AnvilPasses
import Foundation
import XCTest

/// Golden IR-in / IR-out tests and property tests for passes.
enum PassTesting {
    /// Runs passes on a model and returns the printed graph.
    static func optimized(_ model: Model, _ passes: [any Pass]) throws -> (String, PassContext) {
        var options = PipelineOptions()
        options.verify = true
        let context = try PipelineRunner(passes: passes, options: options).run(model)
        return (Printer.print(model.graph), context)
    }

    /// Compares printed IR with a golden file under Tests/AnvilTests/Golden; the
    /// environment variable ANVIL_RECORD_GOLDEN=1 rewrites it.
    static func assertGolden(_ text: String, _ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let path = "\(TestSupport.root)/Tests/AnvilTests/Golden/\(name).txt"
        if ProcessInfo.processInfo.environment["ANVIL_RECORD_GOLDEN"] == "1" {
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return
        }
        guard let expected = try? String(contentsOfFile: path, encoding: .utf8) else {
            XCTFail("golden file \(name).txt is missing; record it with ANVIL_RECORD_GOLDEN=1", file: file, line: line)
            return
        }
        XCTAssertEqual(text, expected, "IR differs from golden \(name).txt", file: file, line: line)
    }

    /// Random inputs fitting a graph's declared inputs (symbolic dims become `symbolSize`).
    static func randomInputs(_ graph: Graph, seed: UInt64, symbolSize: Int = 2) throws -> [String: Tensor] {
        var rng = SeededGenerator(seed: seed)
        var result: [String: Tensor] = [:]
        for input in graph.runtimeInputs {
            let shape = (input.type.dims ?? []).map { $0.value ?? symbolSize }
            let n = shape.reduce(1, *)
            let type = input.type.elementType ?? .float
            switch type {
            case .bool: result[input.name] = try Tensor(bools: (0..<n).map { _ in Bool.random(using: &rng) }, shape: shape)
            case _ where type.isFloatingPoint:
                result[input.name] = try Tensor(type, shape: shape, doubles: (0..<n).map { _ in Double.random(in: -2...2, using: &rng) })
            default: result[input.name] = try Tensor(type, shape: shape, int64s: (0..<n).map { _ in Int64.random(in: 0...3, using: &rng) })
            }
        }
        return result
    }

    /// Runs the model before and after the passes on random inputs; outputs must
    /// agree within `rtol` (relative, plus a tiny absolute floor).
    static func assertPreservesOutputs(_ load: () throws -> Model, _ passes: [any Pass], seeds: [UInt64] = [1, 2],
                                       inputs: [String: Tensor]? = nil, rtol: Double = 1e-5, file: StaticString = #filePath, line: UInt = #line) throws {
        let original = try load(), optimizedModel = try load()
        _ = try optimized(optimizedModel, passes)
        for seed in seeds {
            let feed = try inputs ?? randomInputs(original.graph, seed: seed)
            let expected = try ReferenceExecutor(model: original).run(feed)
            let actual = try ReferenceExecutor(model: optimizedModel).run(feed)
            XCTAssertEqual(expected.map(\.name), actual.map(\.name), file: file, line: line)
            for (e, a) in zip(expected, actual) {
                let c = Comparison.compare(actual: a.value, expected: e.value, atol: 1e-6, rtol: rtol)
                XCTAssertTrue(c.passed, "\(e.name): \(c)", file: file, line: line)
            }
        }
    }
}
