import AnvilCore
import AnvilEngine
import Foundation
import XCTest

final class EngineFileTests: XCTestCase {
    func sample() -> EngineFile {
        EngineFile(producer: "anvil 0.1", requiredFeatures: [.avx2],
                   sections: [("META", Array("{\"model\":\"cnn\"}".utf8)), ("LAYERS", [1, 2, 3]), ("WEIGHTS", (0..<1000).map { UInt8($0 % 251) })])
    }

    func decode(_ bytes: [UInt8], features: CPUFeatures = [.avx2, .avx512Core]) throws -> EngineFile {
        try bytes.withUnsafeBytes { try EngineFile.decode($0, file: "test.anvil", hostFeatures: features) }
    }

    func testRoundTripIsDeterministicAndAligned() throws {
        let bytes = try sample().encoded()
        XCTAssertEqual(bytes, try sample().encoded(), "same contents must give byte-identical files")
        let back = try decode(bytes)
        XCTAssertEqual(back.producer, "anvil 0.1")
        XCTAssertEqual(back.requiredFeatures, [.avx2])
        XCTAssertEqual(back.sectionTags, ["META", "LAYERS", "WEIGHTS"])
        XCTAssertEqual(back.section("WEIGHTS"), sample().section("WEIGHTS"))
        XCTAssertEqual(bytes.count % 64, 0)
    }

    func testMemoryMappedLoad() throws {
        let path = try TestSupport.temporaryFolder() + "/m.anvil"
        try Data(try sample().encoded()).write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try EngineFile.load(path: path, hostFeatures: [.avx2]).section("LAYERS"), [1, 2, 3])
        XCTAssertThrowsError(try EngineFile.load(path: path + ".missing")) { XCTAssertTrue("\($0)".contains("no such file")) }
    }

    func testRefusesEnginesForOtherCPUsWithAClearMessage() throws {
        var file = sample()
        file.requiredFeatures = [.avx512Core, .avx512Bf16]
        XCTAssertThrowsError(try decode(try file.encoded(), features: [.avx2, .avx512Core])) { error in
            XCTAssertTrue("\(error)".contains("engine needs avx512_core_bf16; this CPU lacks it: rebuild it here with anvil build"), "\(error)")
        }
    }

    func testRefusesOtherVersionsAndForeignFiles() throws {
        var bytes = try sample().encoded()
        bytes[8] = 3
        XCTAssertThrowsError(try decode(bytes)) { XCTAssertTrue("\($0)".contains("engine format version 3 is newer"), "\($0)") }
        // An engine of the previous format (untyped tactics) is refused with a rebuild message.
        bytes[8] = 1
        XCTAssertThrowsError(try decode(bytes)) {
            XCTAssertTrue("\($0)".contains("was written by an earlier Anvil (engine format 1") && "\($0)".contains("rebuild it"), "\($0)")
        }
        let onnx = try [UInt8](Data(contentsOf: URL(fileURLWithPath: TestSupport.fixture("cnn/model.onnx"))))
        XCTAssertThrowsError(try decode(onnx)) { XCTAssertTrue("\($0)".contains("looks like an ONNX model"), "\($0)") }
        XCTAssertThrowsError(try decode([])) { XCTAssertTrue("\($0)".contains("bad magic"), "\($0)") }
    }

    /// Every truncation is refused; none crashes.
    func testEveryTruncationIsRefused() throws {
        let bytes = try sample().encoded()
        for length in 0..<bytes.count {
            XCTAssertThrowsError(try decode(Array(bytes[..<length])), "prefix of \(length) bytes")
        }
    }

    /// Thousands of random bit flips: every one is refused (the checksum covers the
    /// whole file), and none crashes.
    func testRandomBitFlipsNeverCrash() throws {
        let bytes = try sample().encoded()
        var rng = SeededGenerator(seed: 31)
        var refused = 0, corrupted = 0
        for _ in 0..<5000 {
            var corrupt = bytes
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                corrupt[Int.random(in: 0..<corrupt.count, using: &rng)] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
            }
            guard corrupt != bytes else { continue }  // two flips of one bit cancel
            corrupted += 1
            if (try? decode(corrupt)) == nil { refused += 1 }
        }
        XCTAssertEqual(refused, corrupted)
        XCTAssertGreaterThan(corrupted, 4900)
    }
}
