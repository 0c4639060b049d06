import AnvilCore
import AnvilIR
import AnvilONNX
import AnvilOps
import Foundation
import XCTest

/// Shape inference checked against reality: every value the reference executor
/// produces must fit the type inference gave it, on the conformance cases, the
/// light models and the fixtures.
final class ShapeInferenceTests: XCTestCase {
    struct Tally { var values = 0; var exact = 0 }

    /// Runs the model on a data set, comparing every produced value with its inferred type.
    func check(folder: String, tally: inout Tally) throws -> [String] {
        let model = try ONNXImporter.load(path: "\(folder)/model.onnx")
        var inference = ShapeInference(model: model)
        let facts = try inference.run()
        var executor = ReferenceExecutor(model: model)
        var problems: [String] = []
        var seen: [String: Tensor] = [:]
        executor.observe = { name, value in seen[name] = value }
        let set = try TestDataSet.folders(under: folder)[0]
        let data = try TestDataSet.load(set)
        let declared = model.graph.runtimeInputs.map(\.name)
        var inputs: [String: Tensor] = [:]
        for (i, item) in data.inputs.enumerated() where i < declared.count {
            inputs[declared.contains(item.name) ? item.name : declared[i]] = item.tensor
        }
        _ = try executor.run(inputs)
        for (name, value) in seen {
            guard let f = facts[name] else { continue }
            tally.values += 1
            if merge(f.type, value.type) == nil { problems.append("\(name): inferred \(f.type), actual \(value.type)") }
            if f.type.concreteShape == value.shape && f.type.elementType == value.dataType { tally.exact += 1 }
        }
        return problems
    }

    func testInferredTypesMatchExecutionOnConformanceCases() throws {
        let dir = "\(ConformanceRunner.root)/conformance-data/node"
        let manifest = try ConformanceRunner.manifest()
        var tally = Tally()
        var failures: [String] = []
        for name in manifest {
            do {
                failures += try check(folder: "\(dir)/\(name)", tally: &tally).map { "\(name): \($0)" }
            } catch {
                failures.append("\(name): \(error)")
            }
        }
        XCTAssertEqual(failures, [], "\(failures.count) inference conflicts")
        print("shape inference (conformance): \(tally.exact) of \(tally.values) values inferred exactly")
        XCTAssertGreaterThan(Double(tally.exact), 0.9 * Double(tally.values))
    }

    func testEveryValueOfRealModelsIsInferredExactly() throws {
        let folders = LightModelTests.models.map { "\(ConformanceRunner.root)/conformance-data/light/\($0)" }
            + ["cnn", "transformer", "if_branch"].map { "\(ConformanceRunner.root)/fixtures/\($0)" }
        for folder in folders {
            var tally = Tally()
            XCTAssertEqual(try check(folder: folder, tally: &tally), [], folder)
            XCTAssertEqual(tally.exact, tally.values, "\(folder): only \(tally.exact) of \(tally.values) values inferred exactly")
        }
    }

    func testSymbolicBatchFlowsThroughTheDynamicModel() throws {
        let model = try ONNXImporter.load(path: "\(ConformanceRunner.root)/fixtures/dynamic_batch/model.onnx")
        var inference = ShapeInference(model: model)
        let facts = try inference.run()
        let output = try XCTUnwrap(facts[model.graph.outputs[0].name])
        XCTAssertEqual(output.type, TensorType(.float, [.symbol("batch"), .known(4)]))
        for node in model.graph.nodes {
            for name in node.outputs {
                XCTAssertEqual(facts[name]?.type.dims?.first, .symbol("batch"), "\(node.name) output \(name): \(String(describing: facts[name]?.type))")
            }
        }
    }
}
