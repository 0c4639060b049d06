import AnvilCore
import AnvilIR
import AnvilONNX
import AnvilOps
import AnvilPasses
import Foundation
import XCTest

/// Every conformance case of the manifest, and the light models, still pass after
/// the full optimization pipeline; a second pipeline run changes nothing.
final class OptimizedConformanceTests: XCTestCase {
    func optimizingRunner(notIdempotent: @escaping (String) -> Void) -> ConformanceRunner {
        var runner = ConformanceRunner()
        runner.execute = { model, inputs in
            var options = PipelineOptions()
            options.verify = true
            let runner = try PipelineRunner(options: options)
            try runner.run(model)
            let once = Printer.print(model.graph)
            let second = try runner.run(model)
            if Printer.print(model.graph) != once || !second.statistics.filter({ $0.key != "normalize" }).isEmpty {
                notIdempotent("\(model.graph.name): \(second.statistics)")
            }
            return try ReferenceExecutor(model: model).run(inputs)
        }
        return runner
    }

    func testManifestCasesPassAfterOptimization() throws {
        var notIdempotent: [String] = []
        let runner = optimizingRunner { notIdempotent.append($0) }
        let failures = try runner.runManifest()
        let total = try ConformanceRunner.manifest().count
        XCTAssertEqual(failures, [], "\(failures.count) cases fail after optimization")
        XCTAssertEqual(notIdempotent, [], "pipeline not idempotent")
        print("optimized conformance: \(total - failures.count) of \(total) pass")
    }

    func testLightModelsPassAfterOptimization() throws {
        var notIdempotent: [String] = []
        let runner = optimizingRunner { notIdempotent.append($0) }
        for name in LightModelTests.models {
            let status = runner.run(folder: "\(ConformanceRunner.root)/conformance-data/light/\(name)", rtol: 1e-3, atol: 1e-4)
            XCTAssertEqual(status, .passed, name)
        }
        XCTAssertEqual(notIdempotent, [])
    }
}
