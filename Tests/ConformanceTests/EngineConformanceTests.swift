import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilONNX
import AnvilRuntime
import Foundation
import XCTest

/// Every conformance case of the manifest, and the light models, through
/// build → write engine bytes → read → run.
final class EngineConformanceTests: XCTestCase {
    /// Counts the runs that used a plan (arena, oneDNN steps) rather than the interpreter.
    final class PlanCount: @unchecked Sendable {
        var planned = 0, runs = 0
        var unplanned: [String: Int] = [:]
    }
    let count = PlanCount()

    /// Runs twice: the first run plans (or observes the shapes of a dynamic graph),
    /// the second must use the plan; its outputs are the ones compared.
    var roundTripRunner: ConformanceRunner {
        var runner = ConformanceRunner()
        let count = self.count
        runner.execute = { model, inputs in
            let built = try EngineBuilder().build(model, name: model.graph.name)
            // Read from the file's encoding, as from disk.
            let engine = try Engine(file: built.file, name: "\(model.graph.name).anvil")
            let context = ExecutionContext(engine: engine)
            _ = try context.run(inputs)
            let outputs = try context.run(inputs)
            count.runs += 1
            if context.lastPlan != nil { count.planned += 1 } else {
                let reason = String((context.planFailure ?? "no plan").prefix(60))
                count.unplanned[reason, default: 0] += 1
            }
            return outputs
        }
        return runner
    }

    func testManifestCasesPassThroughEngines() throws {
        let runner = roundTripRunner
        let failures = try runner.runManifest()
        let total = try ConformanceRunner.manifest().count
        XCTAssertEqual(failures, [], "\(failures.count) cases fail through engines")
        print("engine conformance: \(total - failures.count) of \(total) pass, \(count.planned) of \(count.runs) runs planned")
        for (reason, n) in count.unplanned.sorted(by: { $0.value > $1.value }).prefix(15) { print("  not planned (\(n)): \(reason)") }
        // Only graphs with subgraphs, strings or data-dependent shapes may stay on the interpreter.
        XCTAssertGreaterThan(Double(count.planned), 0.85 * Double(count.runs))
    }

    func testLightModelsPassThroughEngines() throws {
        let runner = roundTripRunner
        for name in LightModelTests.models {
            XCTAssertEqual(runner.run(folder: "\(ConformanceRunner.root)/conformance-data/light/\(name)", rtol: 1e-3, atol: 1e-4), .passed, name)
        }
    }

    /// The layer-graph decoder never crashes, even on bytes the checksum would have caught.
    func testCorruptLayerGraphsAreRefusedWithoutCrashing() throws {
        let model = try ONNXImporter.load(path: "\(ConformanceRunner.root)/fixtures/if_branch/model.onnx")
        let built = try EngineBuilder().build(model, name: "if_branch")
        let graph = try XCTUnwrap(built.file.section("GRAPH"))
        var rng = SystemRandomNumberGenerator()
        for length in stride(from: 0, to: graph.count, by: 3) {
            let file = EngineFile(producer: "test", requiredFeatures: [], sections: [("GRAPH", Array(graph[..<length]))])
            XCTAssertThrowsError(try Engine(file: file, name: "truncated.anvil"))
        }
        for _ in 0..<3000 {
            var corrupt = graph
            for _ in 0..<Int.random(in: 1...4, using: &rng) { corrupt[Int.random(in: 0..<corrupt.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            let file = EngineFile(producer: "test", requiredFeatures: [], sections: [("GRAPH", corrupt)])
            _ = try? Engine(file: file, name: "corrupt.anvil")
        }
    }
}
