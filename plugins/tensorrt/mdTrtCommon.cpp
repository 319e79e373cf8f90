// mdTrtCommon.cpp -- logging, plugin fields, dtype and shape helpers (see mdTrtCommon.h).
#include "mdTrtCommon.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <sstream>

#include <cuda_runtime_api.h>

namespace mamba_deploy {
namespace trt {

namespace {

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

char const* severityTag(nvinfer1::ILogger::Severity s) noexcept
{
    switch (s)
    {
    case nvinfer1::ILogger::Severity::kINTERNAL_ERROR: return "INTERNAL_ERROR";
    case nvinfer1::ILogger::Severity::kERROR: return "ERROR";
    case nvinfer1::ILogger::Severity::kWARNING: return "WARNING";
    case nvinfer1::ILogger::Severity::kINFO: return "INFO";
    case nvinfer1::ILogger::Severity::kVERBOSE: return "VERBOSE";
    }
    return "LOG";
}

} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    if (gLoggerFinder == nullptr && finder != nullptr)
    {
        gLoggerFinder = finder;
    }
}

void log(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        nvinfer1::ILogger* logger{nullptr};
        {
            std::lock_guard<std::mutex> lock(gLoggerMutex);
            if (gLoggerFinder != nullptr)
            {
                logger = gLoggerFinder->findLogger();
            }
        }
        if (logger != nullptr)
        {
            logger->log(severity, message.c_str());
        }
        else if (severity <= nvinfer1::ILogger::Severity::kWARNING)
        {
            std::fprintf(stderr, "[mamba_deploy plugins] %s: %s\n", severityTag(severity), message.c_str());
        }
    }
    catch (...)
    {
        // Logging must never throw out of a noexcept plugin method.
    }
}

void logError(char const* plugin, char const* method, char const* what) noexcept
{
    try
    {
        log(nvinfer1::ILogger::Severity::kERROR, std::string(plugin) + "::" + method + ": " + what);
    }
    catch (...)
    {
    }
}

void require(bool condition, std::string const& message)
{
    if (!condition)
    {
        throw std::invalid_argument(message);
    }
}

// ---- FieldReader --------------------------------------------------------------------------------

FieldReader::FieldReader(nvinfer1::PluginFieldCollection const* fc)
{
    if (fc == nullptr)
    {
        return;
    }
    require(fc->nbFields >= 0 && (fc->nbFields == 0 || fc->fields != nullptr), "malformed PluginFieldCollection");
    mFields.assign(fc->fields, fc->fields + fc->nbFields);
}

nvinfer1::PluginField const* FieldReader::find(char const* name) const
{
    for (auto const& f : mFields)
    {
        if (f.name != nullptr && std::strcmp(f.name, name) == 0)
        {
            return &f;
        }
    }
    return nullptr;
}

bool FieldReader::has(char const* name) const
{
    return find(name) != nullptr;
}

namespace {

double numberAt(nvinfer1::PluginField const& f, int32_t i)
{
    using T = nvinfer1::PluginFieldType;
    switch (f.type)
    {
    case T::kINT8: return static_cast<int8_t const*>(f.data)[i];
    case T::kINT16: return static_cast<int16_t const*>(f.data)[i];
    case T::kINT32: return static_cast<int32_t const*>(f.data)[i];
    case T::kINT64: return static_cast<double>(static_cast<int64_t const*>(f.data)[i]);
    case T::kFLOAT32: return static_cast<float const*>(f.data)[i];
    case T::kFLOAT64: return static_cast<double const*>(f.data)[i];
    default: break;
    }
    throw std::invalid_argument(std::string("field '") + f.name + "' must be a number");
}

bool isIntField(nvinfer1::PluginField const& f)
{
    using T = nvinfer1::PluginFieldType;
    return f.type == T::kINT8 || f.type == T::kINT16 || f.type == T::kINT32 || f.type == T::kINT64;
}

} // namespace

int64_t FieldReader::getInt(char const* name, int64_t fallback) const
{
    auto const* f = find(name);
    if (f == nullptr)
    {
        return fallback;
    }
    require(isIntField(*f), std::string("field '") + name + "' must be an integer");
    require(f->length == 1 && f->data != nullptr, std::string("field '") + name + "' must hold one value");
    return static_cast<int64_t>(numberAt(*f, 0));
}

double FieldReader::getFloat(char const* name, double fallback) const
{
    auto const* f = find(name);
    if (f == nullptr)
    {
        return fallback;
    }
    require(f->length == 1 && f->data != nullptr, std::string("field '") + name + "' must hold one value");
    return numberAt(*f, 0);
}

std::vector<double> FieldReader::getFloats(char const* name, std::vector<double> const& fallback) const
{
    auto const* f = find(name);
    if (f == nullptr)
    {
        return fallback;
    }
    require(f->length >= 0 && (f->length == 0 || f->data != nullptr), std::string("field '") + name + "' is empty");
    std::vector<double> out;
    for (int32_t i = 0; i < f->length; ++i)
    {
        out.push_back(numberAt(*f, i));
    }
    return out;
}

std::string FieldReader::getString(char const* name, std::string const& fallback) const
{
    auto const* f = find(name);
    if (f == nullptr)
    {
        return fallback;
    }
    require(f->type == nvinfer1::PluginFieldType::kCHAR, std::string("field '") + name + "' must be a string");
    if (f->data == nullptr || f->length <= 0)
    {
        return std::string();
    }
    // The ONNX parser counts the terminating NUL in `length`; a serialized engine may not.
    auto const* chars = static_cast<char const*>(f->data);
    return std::string(chars, strnlen(chars, static_cast<size_t>(f->length)));
}

std::vector<std::string> FieldReader::unknown(std::vector<FieldSpec> const& known) const
{
    std::vector<std::string> out;
    for (auto const& f : mFields)
    {
        bool found = false;
        for (auto const& k : known)
        {
            found = found || (f.name != nullptr && std::strcmp(f.name, k.name) == 0);
        }
        if (!found)
        {
            out.emplace_back(f.name != nullptr ? f.name : "<null>");
        }
    }
    return out;
}

// ---- FieldWriter --------------------------------------------------------------------------------

void FieldWriter::clear()
{
    mStore.clear();
    mFields.clear();
    mCollection = nvinfer1::PluginFieldCollection{};
}

void FieldWriter::add(char const* name, std::string bytes, nvinfer1::PluginFieldType type, int32_t length)
{
    mStore.push_back(std::move(bytes));
    mFields.emplace_back(name, mStore.back().data(), type, length);
}

void FieldWriter::addInt(char const* name, int32_t value)
{
    std::string bytes(sizeof(value), '\0');
    std::memcpy(&bytes[0], &value, sizeof(value));
    add(name, std::move(bytes), nvinfer1::PluginFieldType::kINT32, 1);
}

void FieldWriter::addFloats(char const* name, std::vector<float> const& values)
{
    std::string bytes(sizeof(float) * values.size(), '\0');
    if (!values.empty())
    {
        std::memcpy(&bytes[0], values.data(), bytes.size());
    }
    add(name, std::move(bytes), nvinfer1::PluginFieldType::kFLOAT32, static_cast<int32_t>(values.size()));
}

void FieldWriter::addString(char const* name, std::string const& value)
{
    std::string bytes = value;
    bytes.push_back('\0');
    auto const length = static_cast<int32_t>(bytes.size());
    add(name, std::move(bytes), nvinfer1::PluginFieldType::kCHAR, length);
}

nvinfer1::PluginFieldCollection const* FieldWriter::collection()
{
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
    return &mCollection;
}

// ---- tensors ------------------------------------------------------------------------------------

bool isFloatType(nvinfer1::DataType t) noexcept
{
    return t == nvinfer1::DataType::kFLOAT || t == nvinfer1::DataType::kHALF || t == nvinfer1::DataType::kBF16;
}

md_dtype toMdDtype(nvinfer1::DataType t)
{
    switch (t)
    {
    case nvinfer1::DataType::kFLOAT: return MD_FLOAT32;
    case nvinfer1::DataType::kHALF: return MD_FLOAT16;
    case nvinfer1::DataType::kBF16: return MD_BFLOAT16;
    default: break;
    }
    throw std::invalid_argument(std::string("unsupported tensor type ") + typeName(t));
}

char const* typeName(nvinfer1::DataType t) noexcept
{
    switch (t)
    {
    case nvinfer1::DataType::kFLOAT: return "float32";
    case nvinfer1::DataType::kHALF: return "float16";
    case nvinfer1::DataType::kBF16: return "bfloat16";
    case nvinfer1::DataType::kINT32: return "int32";
    case nvinfer1::DataType::kINT64: return "int64";
    default: break;
    }
    return "other";
}

std::string dimsToString(nvinfer1::Dims const& d)
{
    std::ostringstream os;
    os << "(";
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        os << (i ? ", " : "") << d.d[i];
    }
    os << ")";
    return os.str();
}

int64_t TensorArg::stride(int32_t axis) const
{
    int64_t s = 1;
    for (int32_t i = axis + 1; i < dims.nbDims; ++i)
    {
        s *= dims.d[i];
    }
    return s;
}

void expectRank(TensorArg const& t, char const* name, int32_t rank)
{
    require(t.dims.nbDims == rank,
        std::string(name) + " must have rank " + std::to_string(rank) + ", got " + dimsToString(t.dims));
}

void expectDim(TensorArg const& t, char const* name, int32_t axis, int64_t value, char const* what)
{
    int64_t const actual = t.dim(axis);
    require(actual < 0 || value < 0 || actual == value,
        std::string(name) + " axis " + std::to_string(axis) + " must be " + what + " = " + std::to_string(value)
            + ", got " + dimsToString(t.dims));
}

void expectSameDim(
    TensorArg const& a, char const* aName, int32_t aAxis, TensorArg const& b, char const* bName, int32_t bAxis)
{
    int64_t const x = a.dim(aAxis);
    int64_t const y = b.dim(bAxis);
    require(x < 0 || y < 0 || x == y,
        std::string(aName) + " " + dimsToString(a.dims) + " axis " + std::to_string(aAxis) + " and " + bName + " "
            + dimsToString(b.dims) + " axis " + std::to_string(bAxis) + " must match");
}

std::string launchError(cudaError_t err)
{
    char const* check = md_kernels_check_message();
    if (err == cudaErrorInvalidValue && check != nullptr && check[0] != '\0')
    {
        return std::string("invalid parameters: ") + check;
    }
    return std::string("CUDA error: ") + cudaGetErrorString(err);
}

} // namespace trt
} // namespace mamba_deploy
