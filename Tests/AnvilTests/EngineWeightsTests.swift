import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilKernels
import AnvilONNX
import AnvilOps
import AnvilRuntime
import Foundation
import XCTest

/// Prepacked weights (WEIGHTS) and the stored memory plan (MEMPLAN): written by the
/// builder, used in place by the runtime, unpacked where a layer needs them plain,
/// and never trusted blindly.
final class EngineWeightsTests: XCTestCase {
    struct Built {
        let model: Model
        let result: EngineBuilder.Result
        var sections: [(tag: String, bytes: [UInt8])] { result.file.sections }
    }

    func buildCNN() throws -> Built {
        let model = try ONNXImporter.load(path: TestSupport.fixture("cnn/model.onnx"))
        return Built(model: model, result: try EngineBuilder().build(model, name: "cnn"))
    }

    /// An engine file made of `sections`, read back as `anvil` would read it.
    func engine(_ sections: [(tag: String, bytes: [UInt8])]) throws -> Engine {
        try Engine(file: EngineFile(producer: "anvil 0.1", requiredFeatures: [], sections: sections), name: "cnn.anvil")
    }

    func testWeightsArePrepackedInTheFileAndUsedInPlace() throws {
        let built = try buildCNN()
        XCTAssertEqual(Set(built.sections.map(\.tag)), ["META", "GRAPH", "MEMPLAN", "WEIGHTS"])
        let engine = try engine(built.sections)
        // Convolution and Gemm weights are stored only prepacked; Winograd-transformed ones (when
        // tactic timing picks Winograd) cannot be read back and stay plain too.
        let packedOnly = engine.graph.constants.names.filter { engine.graph.constants.isPackedOnly($0) }
        let weighted = engine.graph.layers.filter { ["Conv", "FusedConv", "Gemm", "FusedGemm"].contains($0.opType) }
        XCTAssertEqual(Set(packedOnly), Set(weighted.filter { $0.decision?.algorithm != .winograd }.map { $0.inputs[1] }))
        XCTAssertEqual(engine.graph.constants.packed.count, weighted.count, "one prepacked copy per weighted layer")
        for p in engine.graph.constants.packed {
            XCTAssertEqual(Int(bitPattern: p.data.baseAddress) % 64, 0, "\(p.constant) is not 64-byte aligned")
        }
        let inputs = try PassTesting.randomInputs(built.model.graph, seed: 9)
        let context = ExecutionContext(engine: engine)
        let outputs = try context.run(inputs)
        XCTAssertNotNil(context.lastPlan, context.planFailure ?? "")
        let usage = engine.weightsInPlace
        XCTAssertEqual(usage.inPlace, usage.kernels, "every kernel must use the file's weights in place")
        XCTAssertEqual(usage.kernels, weighted.count)
        // The same numbers as the engine the builder planned (which packed the weights itself) …
        let fromBuild = try ExecutionContext(engine: built.result.engine).run(inputs)
        XCTAssertEqual(outputs.map(\.value), fromBuild.map(\.value))
        // … and as the reference executor on the ONNX model.
        let expected = try ReferenceExecutor(model: try ONNXImporter.load(path: TestSupport.fixture("cnn/model.onnx"))).run(inputs)
        XCTAssertTrue(Comparison.compare(actual: outputs[0].value, expected: expected[0].value, atol: 1e-5, rtol: 1e-4).passed)
    }

    /// A layer that needs weights plain (here the interpreter) gets them reordered back
    /// exactly: packing is a permutation.
    func testPackedOnlyWeightsUnpackExactly() throws {
        let built = try buildCNN()
        let engine = try engine(built.sections)
        for name in engine.graph.constants.names where engine.graph.constants.isPackedOnly(name) {
            XCTAssertEqual(try engine.graph.constants.tensor(name), try built.result.graph.constants.tensor(name), name)
        }
        let inputs = try PassTesting.randomInputs(built.model.graph, seed: 4)
        let interpreted = ExecutionContext(engine: engine)
        interpreted.usePlan = false
        let planned = try ExecutionContext(engine: engine).run(inputs)
        XCTAssertTrue(Comparison.compare(actual: try interpreted.run(inputs)[0].value, expected: planned[0].value, atol: 1e-5, rtol: 1e-4).passed)
    }

    func testStoredMemoryPlanIsAdoptedOnlyWhenItIsSound() throws {
        let built = try buildCNN()
        let inputs = try PassTesting.randomInputs(built.model.graph, seed: 2)
        let good = try engine(built.sections)
        let context = ExecutionContext(engine: good)
        let expected = try context.run(inputs)
        XCTAssertEqual(context.lastPlan?.usesStoredMemoryPlan, true)
        XCTAssertEqual(good.memoryPlan, context.lastPlan?.storedMemoryPlan)
        // A plan putting every buffer at offset 0 would overlap live buffers: computed anew instead.
        var plan = try XCTUnwrap(good.memoryPlan)
        for key in plan.buffers.keys { plan.buffers[key]!.offset = 0 }
        let built2 = try EngineFormat.file(for: built.result.graph, producer: "anvil 0.1", requiredFeatures: [], metadata: [],
                                     weights: built.result.compiled.packedWeights, packedOnly: Set(good.graph.constants.names.filter { good.graph.constants.isPackedOnly($0) }),
                                     memoryPlan: plan)
        let bad = try engine(built2.sections)
        let badContext = ExecutionContext(engine: bad)
        XCTAssertEqual(try badContext.run(inputs).map(\.value), expected.map(\.value))
        XCTAssertEqual(badContext.lastPlan?.usesStoredMemoryPlan, false)
    }

    /// The engine records the instruction set its kernels were chosen for and is refused without it.
    func testEngineNeedsTheInstructionSetItWasBuiltFor() throws {
        let file = try buildCNN().result.file
        XCTAssertTrue(file.requiredFeatures.isSubset(of: CPUFeatures.host))
        guard CPUFeatures.host.contains(.avx512Core) else { return }
        XCTAssertEqual(file.requiredFeatures, [.avx512Core])
        let bytes = try file.encoded()
        XCTAssertThrowsError(try bytes.withUnsafeBytes { try EngineFile.decode($0, file: "cnn.anvil", hostFeatures: [.avx2]) }) { error in
            XCTAssertTrue("\(error)".contains("engine needs avx512_core; this CPU lacks it: rebuild it here with anvil build"), "\(error)")
        }
    }

    func testWeightsPackedForAnotherOneDNNAreRefused() throws {
        var sections = try buildCNN().sections
        let i = try XCTUnwrap(sections.firstIndex { $0.tag == "WEIGHTS" })
        sections[i].bytes[0] &+= 1  // the oneDNN major version
        XCTAssertThrowsError(try engine(sections)) { error in
            XCTAssertTrue("\(error)".contains("packed for oneDNN") && "\(error)".contains("rebuild it here with anvil build"), "\(error)")
        }
    }

    /// Truncated and corrupted WEIGHTS, MEMPLAN and GRAPH sections (behind a valid checksum):
    /// refused with an error or read; engines with damaged weights or memory plans that
    /// still read also run without crashing.
    func testCorruptWeightsAndMemoryPlansNeverCrash() throws {
        let built = try buildCNN()
        let inputs = try PassTesting.randomInputs(built.model.graph, seed: 1)
        var rng = SeededGenerator(seed: 77)
        var loaded = 0
        // A damaged GRAPH may still describe a valid but enormous model, so it is only
        // decoded (below), not run.
        for tag in ["WEIGHTS", "MEMPLAN", "GRAPH"] {
            let index = try XCTUnwrap(built.sections.firstIndex { $0.tag == tag })
            let original = built.sections[index].bytes
            var variants: [[UInt8]] = stride(from: 0, to: min(original.count, 4096), by: 7).map { Array(original[..<$0]) }
            for _ in 0..<400 {
                var corrupt = original
                // Mostly the table at the start, where a flip changes a name, a layout or an offset.
                let span = Bool.random(using: &rng) ? min(corrupt.count, 1024) : corrupt.count
                for _ in 0..<Int.random(in: 1...3, using: &rng) { corrupt[Int.random(in: 0..<span, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
                variants.append(corrupt)
            }
            for bytes in variants {
                var sections = built.sections
                sections[index].bytes = bytes
                guard let engine = try? engine(sections) else { continue }
                loaded += 1
                if tag == "GRAPH" { continue }
                _ = try? ExecutionContext(engine: engine).run(inputs)
                let interpreted = ExecutionContext(engine: engine)
                interpreted.usePlan = false
                _ = try? interpreted.run(inputs)
            }
        }
        XCTAssertGreaterThan(loaded, 100, "too few corrupt engines parse to exercise running them")
    }
}
