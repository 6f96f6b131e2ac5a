# Fails when BINARY (linked with --no-as-needed, so every library it was
# given stays listed) needs LibTorch: the launch room must build and run
# without it.
execute_process(COMMAND readelf -d ${BINARY} OUTPUT_VARIABLE dynamic RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "readelf -d ${BINARY} failed")
endif()
string(REGEX MATCHALL "\\[lib[^]]*\\]" needed "${dynamic}")
list(LENGTH needed count)
if(count EQUAL 0)
  message(FATAL_ERROR "no NEEDED entries read from ${BINARY}")
endif()
foreach(lib IN LISTS needed)
  if(lib MATCHES "torch|c10")
    message(FATAL_ERROR "${BINARY} needs ${lib}: the launch room links LibTorch")
  endif()
endforeach()
message(STATUS "${BINARY} needs ${count} libraries, none of them LibTorch")
