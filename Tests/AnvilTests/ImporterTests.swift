import AnvilCore
import AnvilIR
import AnvilONNX
import AnvilOps
import Foundation
import XCTest

final class ImporterTests: XCTestCase {
    func testImportsCNNFixture() throws {
        let model = try ONNXImporter.load(path: TestSupport.fixture("cnn/model.onnx"))
        XCTAssertEqual(model.producerName, "pytorch")
        XCTAssertEqual(model.opsetVersion(domain: ""), 17)
        XCTAssertEqual(model.graph.runtimeInputs.map(\.name), ["image"])
        XCTAssertEqual(model.graph.runtimeInputs[0].type, TensorType(.float, shape: [1, 3, 32, 32]))
        XCTAssertEqual(model.graph.outputs.map(\.name), ["logits"])
        let ops = Set(model.graph.nodes.map(\.opType))
        XCTAssertTrue(ops.isSuperset(of: ["Conv", "BatchNormalization", "Relu", "MaxPool", "Add", "Gemm"]), "\(ops)")
        XCTAssertNoThrow(try Verifier.verify(model.graph))
    }

    func testSymbolicDimensionsSurviveImport() throws {
        let model = try ONNXImporter.load(path: TestSupport.fixture("dynamic_batch/model.onnx"))
        XCTAssertEqual(model.graph.runtimeInputs[0].type.dims, [.symbol("batch"), .known(1), .known(28), .known(28)])
        XCTAssertEqual(model.graph.outputs[0].type.dims?.first, .symbol("batch"))
    }

    func testIfBranchesImportAsSubgraphs() throws {
        let model = try ONNXImporter.load(path: TestSupport.fixture("if_branch/model.onnx"))
        let ifNode = try XCTUnwrap(model.graph.nodes.first { $0.opType == "If" })
        XCTAssertEqual(ifNode.subgraphs.count, 2)
        XCTAssertFalse(ifNode.subgraphs[0].nodes.isEmpty)
    }

    func testExternalDataIsReadFromTheModelsFolder() throws {
        let model = try ONNXImporter.load(path: TestSupport.fixture("invalid/external_ok.onnx"))
        XCTAssertEqual(model.graph.initializers["w"]?.floats, [0, 1, 2, 3, 4, 5])
    }

    func assertRefused(_ file: String, mentions fragments: [String], line: UInt = #line) {
        XCTAssertThrowsError(try ONNXImporter.load(path: TestSupport.fixture("invalid/\(file)")), line: line) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(file), "error should name the file: \(text)", line: line)
            for f in fragments { XCTAssertTrue(text.contains(f), "error should mention '\(f)': \(text)", line: line) }
        }
    }

    func testRefusesFilesThatAreNotONNX() {
        assertRefused("not_onnx.onnx", mentions: ["not a valid ONNX protobuf"])
    }

    func testRefusesExternalDataOutsideTheModelFolder() {
        assertRefused("external_escape.onnx", mentions: ["external_data.location", "outside the model's folder"])
        assertRefused("external_absolute.onnx", mentions: ["absolute path"])
    }

    func testRefusesDeclaredSizesThatDisagreeWithTheData() {
        assertRefused("raw_size_mismatch.onnx", mentions: ["initializer 'w'", "raw_data"])
        assertRefused("external_length_mismatch.onnx", mentions: ["external_data.length", "24 bytes"])
    }

    func testRefusesAbsurdDimensionsWithoutAllocating() {
        assertRefused("absurd_dims.onnx", mentions: ["initializer 'w'.dims", "limit"])
    }

    func testRefusesMissingInitializersAndCycles() {
        assertRefused("missing_initializer.onnx", mentions: ["node 'add1'", "'w' is not defined"])
        assertRefused("cycle.onnx", mentions: ["node 'add1'", "'u' is not defined"])
    }

    /// Every truncation of a real model is refused with an error, never a crash.
    func testTruncatedModelsNeverCrash() throws {
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: TestSupport.fixture("cnn/model.onnx"))))
        var refused = 0
        for length in stride(from: 0, to: bytes.count, by: 7) {
            do {
                let model = try ONNXImporter.decodeModel(Array(bytes[..<length]), file: "truncated.onnx", folder: nil)
                // A cut on a field boundary can still decode; it must then fail verification or be well formed.
                _ = try? Verifier.verify(model.graph)
            } catch {
                refused += 1
                XCTAssertTrue("\(error)".contains("truncated.onnx"), "\(error)")
            }
        }
        XCTAssertGreaterThan(refused, bytes.count / 7 / 2)
    }

    /// Random byte flips in a real model are refused or decode; they never crash.
    func testCorruptedModelsNeverCrash() throws {
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: TestSupport.fixture("transformer/model.onnx"))))
        var rng = SeededGenerator(seed: 42)
        for _ in 0..<300 {
            var corrupt = bytes
            for _ in 0..<4 { corrupt[Int.random(in: 0..<corrupt.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng) }
            if let model = try? ONNXImporter.decodeModel(corrupt, file: "corrupt.onnx", folder: nil) {
                _ = try? Verifier.verify(model.graph)
            }
        }
    }

    /// Protobuf bytes of a model whose graph nests `levels` If subgraphs.
    static func nestedModel(levels: Int) -> [UInt8] {
        func varint(_ value: Int) -> [UInt8] {
            var v = UInt64(value), out: [UInt8] = []
            repeat { out.append(UInt8(v & 0x7F) | (v > 0x7F ? 0x80 : 0)); v >>= 7 } while v > 0
            return out
        }
        func field(_ number: Int, _ payload: [UInt8]) -> [UInt8] { varint(number << 3 | 2) + varint(payload.count) + payload }
        var graph = field(2, Array("g".utf8))
        for _ in 0..<levels {
            let attribute = field(1, Array("then_branch".utf8)) + field(6, graph)
            graph = field(1, field(4, Array("If".utf8)) + field(5, attribute))
        }
        return varint(1 << 3) + varint(8) + field(8, varint(2 << 3) + varint(17)) + field(7, graph)
    }

    /// A file built to exhaust a recursive decoder is refused before decoding.
    func testDeeplyNestedMessagesAreRefusedWithoutCrashing() {
        XCTAssertThrowsError(try ONNXImporter.decodeModel(Self.nestedModel(levels: 5_000), file: "deep.onnx", folder: nil)) { error in
            XCTAssertTrue("\(error)".contains("nested more than"), "\(error)")
        }
        // Within the decoder's limit but past the subgraph limit: a clear error too.
        XCTAssertThrowsError(try ONNXImporter.decodeModel(Self.nestedModel(levels: 80), file: "deep.onnx", folder: nil)) { error in
            XCTAssertTrue("\(error)".contains("subgraphs are nested more than 64 deep"), "\(error)")
        }
    }

    func testTensorProtoAndNumPyRoundTrip() throws {
        let folder = try TestSupport.temporaryFolder()
        let tensors: [Tensor] = [
            try Tensor(floats: [1.5, -2, .infinity, 0], shape: [2, 2]),
            try Tensor(int64s: [1, -2, .max], shape: [3]),
            try Tensor(bools: [true, false], shape: [2, 1]),
            try Tensor(.float16, shape: [2], doubles: [0.5, -3]),
            try Tensor(.uint8, shape: [], int64s: [200]),
        ]
        for (i, t) in tensors.enumerated() {
            for ext in ["pb", "npy"] {
                let path = "\(folder)/t\(i).\(ext)"
                try OutputFiles.write([(path, TensorFiles.encode(t, name: "t\(i)", forPath: path))])
                let back = try TensorFiles.read(path)
                XCTAssertEqual(back.tensor, t, "\(ext) round trip of \(t)")
                if ext == "pb" { XCTAssertEqual(back.name, "t\(i)") }
            }
        }
        let strings = try Tensor(shape: [2], storage: .string(["a", "héllo"]))
        let path = "\(folder)/s.pb"
        try OutputFiles.write([(path, TensorFiles.encode(strings, name: "s", forPath: path))])
        XCTAssertEqual(try TensorFiles.read(path).tensor, strings)
    }

    func testNumPyFilesFromNumPy() throws {
        let t = try TensorFiles.read(TestSupport.fixture("invalid/x_ok.npy")).tensor
        XCTAssertEqual(t.shape, [2, 3])
        XCTAssertEqual(t.floats, Array(repeating: 1, count: 6))
        XCTAssertThrowsError(try TensorFiles.read(TestSupport.fixture("invalid/x_truncated.npy"))) { error in
            XCTAssertTrue("\(error)".contains("needs 24 bytes"), "\(error)")
        }
    }
}
